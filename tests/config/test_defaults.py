"""The web as it runs with no Django variables set (`make run`, the Procfile): DEBUG off, only
local host names, static files and the storefront served all the same."""
import requests

SECRETS_ON_DEBUG_PAGES = ("CELERY_BROKER_URL", "DATABASES", "SECRET_KEY", "ALIPAY_GATEWAY",
                          "Traceback")


def test_a_refused_form_and_a_missing_page_show_no_settings_and_no_urls(asgi_web: str) -> None:
    fields = "&".join(f"k{i}=v" for i in range(1001))

    refused = requests.post(f"{asgi_web}/users/", data=fields, timeout=10,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    missing = requests.get(f"{asgi_web}/no-such-page/", timeout=10)

    assert refused.status_code == 400
    assert missing.status_code == 404
    for response in (refused, missing):
        assert len(response.content) < 2000, response.text[:200]
        for text in (*SECRETS_ON_DEBUG_PAGES, "URLconf", "payment/alipay/notify"):
            assert text not in response.text, text


def test_only_local_host_names_are_answered(asgi_web: str) -> None:
    port = asgi_web.rsplit(":", 1)[1]

    def status(host: str) -> int:
        return requests.get(f"{asgi_web}/healthz", headers={"Host": host}, timeout=10).status_code

    assert status(f"127.0.0.1:{port}") == 200
    assert status(f"localhost:{port}") == 200
    assert status(f"[::1]:{port}") == 200
    foreign = requests.get(f"{asgi_web}/", headers={"Host": "shop.attacker.example"}, timeout=10)
    assert foreign.status_code == 400
    assert "DisallowedHost" not in foreign.text and "ALLOWED_HOSTS" not in foreign.text


def test_storefront_and_its_static_files_are_served_without_debug(asgi_web: str) -> None:
    page = requests.get(f"{asgi_web}/", timeout=10)
    script = requests.get(f"{asgi_web}/static/shop/storefront.js", timeout=10)
    style = requests.get(f"{asgi_web}/static/shop/shop.css", timeout=10)

    assert page.status_code == 200 and "/static/shop/storefront.js" in page.text
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
    assert style.status_code == 200 and style.headers["Content-Type"].startswith("text/css")


def test_a_body_above_the_upload_limit_is_refused_before_it_is_parsed(asgi_web: str) -> None:
    body = "sign=" + "A" * (300 * 1024)

    response = requests.put(f"{asgi_web}/payment/status/", data=body, timeout=10,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status_code == 413
