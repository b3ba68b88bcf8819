"""Sign-in cannot be guessed: failed sign-ins lock the account and the client for a cool-off
(API, storefront and admin alike, held in the database across web processes); API tokens
expire and a client can revoke its own."""
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db.models import F
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from shop.models import User
from tests.factories import UserFactory
from tests.support import ManagedProcess, free_port, procfile_command, wait_for_port

ACCOUNT_LIMIT = 5
CLIENT_LIMIT = 12
COOL_OFF = timedelta(minutes=15)
PASSWORD = "s3cret-pass"


@pytest.fixture(autouse=True)
def limits(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = ACCOUNT_LIMIT
    settings.LOGIN_FAILURES_PER_CLIENT = CLIENT_LIMIT
    settings.AXES_COOLOFF_TIME = COOL_OFF


def _user(username: str, **fields: Any) -> User:
    return UserFactory(username=username, password=PASSWORD, **fields)


def _api_sign_in(username: str, password: str, address: str) -> Any:
    return APIClient().post("/authorizations/", {"username": username, "password": password},
                            format="json", REMOTE_ADDR=address)


def _assert_api_locked_out(response: Any) -> None:
    assert response.status_code == 429, response.content
    assert "Too many failed sign-ins" in response.json()["message"]
    assert response["Retry-After"] == str(int(COOL_OFF.total_seconds()))
    assert "token" not in response.json()


def _cool_off_passes() -> None:
    from axes.models import AccessAttempt

    AccessAttempt.objects.update(attempt_time=F("attempt_time") - COOL_OFF - timedelta(seconds=1))


@pytest.mark.django_db
def test_api_guesses_at_one_account_from_many_clients_lock_the_account() -> None:
    _user("alice")
    _user("bob")
    codes = [_api_sign_in("alice", f"guess-{i}", f"10.0.0.{i + 1}").status_code
             for i in range(ACCOUNT_LIMIT)]
    assert codes == [400] * (ACCOUNT_LIMIT - 1) + [429]

    _assert_api_locked_out(_api_sign_in("alice", PASSWORD, "10.0.1.1"))
    # The lock is the account's: another account from a guessing address signs in.
    assert _api_sign_in("bob", PASSWORD, "10.0.0.1").status_code == 200

    _cool_off_passes()
    after = _api_sign_in("alice", PASSWORD, "10.0.1.1")
    assert after.status_code == 200, after.content
    assert after.json()["username"] == "alice"
    assert after.json()["token"]


@pytest.mark.django_db
def test_api_guesses_at_many_accounts_from_one_client_lock_the_client() -> None:
    users = [_user(f"user{i}") for i in range(CLIENT_LIMIT // (ACCOUNT_LIMIT - 1) + 1)]
    # Successful sign-ins are not counted, however many.
    for _ in range(CLIENT_LIMIT + 1):
        assert _api_sign_in("user0", PASSWORD, "10.9.9.9").status_code == 200

    codes = [_api_sign_in(users[i // (ACCOUNT_LIMIT - 1)].username, "guess", "10.9.9.9")
             .status_code for i in range(CLIENT_LIMIT)]
    assert codes == [400] * (CLIENT_LIMIT - 1) + [429]

    # No account reached its own limit, yet the client is refused even the right password...
    _assert_api_locked_out(_api_sign_in(users[-1].username, PASSWORD, "10.9.9.9"))
    # ...while the same accounts sign in from elsewhere.
    assert _api_sign_in(users[0].username, PASSWORD, "10.9.9.10").status_code == 200

    _cool_off_passes()
    assert _api_sign_in(users[-1].username, PASSWORD, "10.9.9.9").status_code == 200


def _form_sign_in(path: str, username: str, password: str, address: str) -> tuple[Any, Client]:
    client = Client(REMOTE_ADDR=address)
    response = client.post(path, {"username": username, "password": password})
    return response, client


def _assert_page_locked_out(response: Any, client: Client) -> None:
    assert response.status_code == 429
    assert "Too many failed sign-ins" in response.content.decode()
    assert response["Retry-After"] == str(int(COOL_OFF.total_seconds()))
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_form_guesses_lock_the_account_and_the_client(path: str) -> None:
    _user("staffer", is_staff=True, is_superuser=True)
    _user("other", is_staff=True)
    for i in range(ACCOUNT_LIMIT - 1):
        response, _ = _form_sign_in(path, "staffer", f"guess-{i}", f"10.1.0.{i + 1}")
        assert response.status_code == 200  # the form again, with its error
    response, client = _form_sign_in(path, "staffer", "guess", "10.1.0.99")
    _assert_page_locked_out(response, client)
    _assert_page_locked_out(*_form_sign_in(path, "staffer", PASSWORD, "10.1.1.1"))

    for i in range(CLIENT_LIMIT):
        _form_sign_in(path, f"nobody{i}", "guess", "10.2.0.1")
    _assert_page_locked_out(*_form_sign_in(path, "other", PASSWORD, "10.2.0.1"))

    _cool_off_passes()
    response, client = _form_sign_in(path, "staffer", PASSWORD, "10.1.1.1")
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(User.objects.get(username="staffer").pk)


@pytest.mark.django_db
def test_expired_token_is_refused_with_a_clear_message(settings: Any) -> None:
    _user("carol")
    signed_in = _api_sign_in("carol", PASSWORD, "10.3.0.1")
    assert signed_in.status_code == 200
    body = signed_in.json()
    assert set(body) >= {"token", "user_id", "username", "expiry"}
    expiry = datetime.fromisoformat(body["expiry"])
    assert abs(expiry - (timezone.now() + settings.REST_KNOX["TOKEN_TTL"])) < timedelta(minutes=1)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert api.get("/orders/").status_code == 200

    from knox.models import AuthToken

    AuthToken.objects.filter(user__username="carol").update(
        expiry=timezone.now() - timedelta(seconds=1))
    refused = api.get("/orders/")
    assert refused.status_code == 401
    assert "expired" in refused.json()["message"]


@pytest.mark.django_db
def test_delete_authorization_revokes_that_token_only() -> None:
    _user("dave")
    first = _api_sign_in("dave", PASSWORD, "10.4.0.1").json()["token"]
    second = _api_sign_in("dave", PASSWORD, "10.4.0.2").json()["token"]
    assert first != second
    api, other = APIClient(), APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {first}")
    other.credentials(HTTP_AUTHORIZATION=f"Token {second}")

    assert api.delete("/authorizations/").status_code == 204
    assert api.get("/orders/").status_code == 401
    assert api.delete("/authorizations/").status_code == 401
    assert other.get("/orders/").status_code == 200
    # A stale token sent along does not stand in the way of signing in again.
    again = api.post("/authorizations/", {"username": "dave", "password": PASSWORD},
                     format="json")
    assert again.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header", ["Token", "Token a b", "Token \u00ff\u00fe", "Token " + "0" * 64],
    ids=["no-token", "spaces", "not-ascii", "unknown"])
def test_bad_token_headers_get_401(header: str) -> None:
    response = APIClient().get("/orders/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["message"]


@pytest.mark.django_db(transaction=True)
def test_production_server_shares_the_count_with_other_processes(
    worker_env: dict[str, str], log_dir: Path
) -> None:
    """The Procfile's gunicorn (uvicorn workers, ASGI) and this process count failures
    together through the database, under the account whatever the spelling of its name, and
    the admin form's lockout page comes through ASGI."""
    _user("erin", is_staff=True)
    port = free_port()
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "DJANGO_DEBUG": "false",
           "LOG_LEVEL": "WARNING", "LOGIN_FAILURES_PER_ACCOUNT": str(ACCOUNT_LIMIT),
           "LOGIN_FAILURES_PER_CLIENT": str(CLIENT_LIMIT),
           "LOGIN_LOCKOUT_SECONDS": str(int(COOL_OFF.total_seconds()))}
    web = ManagedProcess("signin-web", procfile_command("web"), env, log_dir).start()
    base = f"http://127.0.0.1:{port}"

    def served(username: str, password: str) -> requests.Response:
        return requests.post(f"{base}/authorizations/", timeout=10,
                             json={"username": username, "password": password})

    try:
        wait_for_port(port)
        # Made by the server: it hashes with the production hasher, not the tests' fast one.
        assert requests.post(f"{base}/users/", timeout=10,
                             json={"username": "frank", "password": PASSWORD}).status_code == 201
        codes = [served("erin", "guess-1").status_code, served("erin", "guess-2").status_code]
        codes += [_api_sign_in("erin", f"guess-{i}", "127.0.0.1").status_code for i in (3, 4)]
        codes.append(served("ＥＲＩＮ", "guess-5").status_code)  # one account, any spelling
        locked = served("Erin", PASSWORD)
        locked_here = _api_sign_in("erin", PASSWORD, "127.0.0.1")
        browser = requests.Session()
        form = browser.get(f"{base}/admin/login/", timeout=10)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert csrf, form.text[:500]
        page = browser.post(f"{base}/admin/login/", timeout=10, data={
            "username": "ERIN", "password": PASSWORD, "csrfmiddlewaretoken": csrf.group(1)})
        other_account = served("frank", PASSWORD)
    finally:
        web.stop()

    assert codes == [400] * (ACCOUNT_LIMIT - 1) + [429]
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.json()["message"]
    assert locked.headers["Retry-After"] == str(int(COOL_OFF.total_seconds()))
    assert locked_here.status_code == 429
    assert page.status_code == 429, page.text[:500]
    assert "Too many failed sign-ins" in page.text
    assert page.headers["Retry-After"] == str(int(COOL_OFF.total_seconds()))
    assert "sessionid" not in browser.cookies
    assert other_account.status_code == 200


# Each spelling sign-in takes for the account "victim": case and Unicode (NFKC) forms.
VICTIM_SPELLINGS = ["victim", "VICTIM", "Victim", "vIcTiM", "ｖｉｃｔｉｍ", "ＶＩＣＴＩＭ"]


def _sign_in_at(entry: str, username: str, password: str, address: str) -> tuple[int, Any]:
    """The status code of a sign-in at the API or one of the sign-in forms, and its client."""
    if entry == "api":
        response = _api_sign_in(username, password, address)
        return response.status_code, response
    response, client = _form_sign_in(entry, username, password, address)
    return response.status_code, client


@pytest.mark.django_db
def test_sign_in_lockout_counts_one_account_however_its_name_is_spelled() -> None:
    """Failures in one spelling lock every spelling sign-in resolves to the same account,
    at the API, the storefront's form and the admin's alike."""
    from axes.models import AccessAttempt

    _user("victim", is_staff=True, is_superuser=True)
    entries = ["api", "/login/", "/admin/login/"]
    # Each spelling signs in while the account is not locked.
    assert {_sign_in_at(entry, spelling, PASSWORD, "10.6.0.1")[0]
            for entry, spelling in zip(entries * 2, VICTIM_SPELLINGS, strict=True)} == {200, 302}

    codes = [_sign_in_at(entries[i % 3], VICTIM_SPELLINGS[i], "guess", f"10.5.0.{i + 1}")[0]
             for i in range(ACCOUNT_LIMIT)]
    assert codes == [400, 200, 200, 400, 429]  # the API's and the forms' failures, then locked

    for entry in entries:
        for spelling in VICTIM_SPELLINGS:
            code, client = _sign_in_at(entry, spelling, PASSWORD, "10.7.0.1")
            assert code == 429, (entry, spelling)
            if entry != "api":
                assert "_auth_user_id" not in client.session
    assert list(AccessAttempt.objects.values_list("username", flat=True).distinct()) == [
        "victim"]

    _cool_off_passes()
    for entry in entries:
        assert _sign_in_at(entry, "ＶｉＣＴＩＭ", PASSWORD, "10.7.0.1")[0] in (200, 302), entry


@pytest.mark.django_db
@pytest.mark.parametrize("entry", ["api", "/login/", "/admin/login/"])
def test_a_name_that_grows_in_unicode_normalisation_is_a_failed_sign_in(entry: str) -> None:
    """"ﷺ" is 18 letters in NFKC: 150 of them are no account, and counted as a failure."""
    from axes.models import AccessAttempt

    code, _ = _sign_in_at(entry, "\ufdfa" * 150, "guess", "10.8.0.1")

    assert code == (400 if entry == "api" else 200)
    assert AccessAttempt.objects.get().failures_since_start == 1
