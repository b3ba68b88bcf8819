"""Usernames: one safe alphabet, and one account per name whatever its case."""
import threading

import pytest
import requests
from django.db import connection, transaction
from django.test import Client

from shop.models import User
from tests.factories import UserFactory
from tests.support import ShopClient, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "s3cret-pass"


def _sign_up(web: str, username: str) -> requests.Response:
    return requests.post(f"{web}/users/", json={"username": username, "password": PASSWORD},
                         timeout=30)


@pytest.mark.parametrize(
    "username",
    ["two words", "<script>", "a<b>c", "ab", "x" * 31, "tab\tname", "zero\u200bwidth",
     "-dash-first", ".dot", "with@at", "dеmo"],  # the last one's "е" is Cyrillic
    ids=["space", "angle-brackets", "inner-brackets", "too-short", "too-long", "tab",
         "zero-width", "dash-first", "dot-first", "at-sign", "look-alike"],
)
def test_sign_up_with_a_name_outside_the_alphabet_gets_400(web: str, username: str) -> None:
    response = _sign_up(web, username)

    assert response.status_code == 400, response.text
    assert "A username is 3 to 30 characters" in response.json()["message"]
    assert not User.objects.exists()


@pytest.mark.parametrize("username", ["abc", "Jo.Smith_2-b", "x" * 30, "ｍｉｎｇ"])
def test_sign_up_with_a_name_inside_the_alphabet_is_created(web: str, username: str) -> None:
    response = _sign_up(web, username)

    assert response.status_code == 201, response.text
    stored = User.objects.get()
    assert stored.username == response.json()["username"] == User.normalize_username(username)


@pytest.mark.parametrize("twin", ["Demo", "DEMO", "ＤＥＭＯ", " demo "])
def test_sign_up_of_a_case_twin_of_a_taken_name_gets_400(web: str, twin: str) -> None:
    assert _sign_up(web, "demo").status_code == 201

    response = _sign_up(web, twin)

    assert response.status_code == 400, response.text
    assert response.json()["message"] == "This username is taken."
    assert list(User.objects.values_list("username", flat=True)) == ["demo"]


def test_a_sign_up_that_loses_the_race_for_a_name_gets_400_not_500(web: str) -> None:
    """The other sign-up commits after this one's check: the database refuses the second row."""
    outcome: list[requests.Response] = []
    with transaction.atomic():
        UserFactory(username="racer")  # not committed yet
        request = threading.Thread(target=lambda: outcome.append(_sign_up(web, "RACER")))
        request.start()

        def insert_is_waiting_for_ours() -> bool:
            with connection.cursor() as cursor:
                # Within a transaction the activity view is a snapshot unless it is cleared.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO %%shop_user%%'")
                return bool(cursor.fetchone()[0])

        wait_for(insert_is_waiting_for_ours, 20, 0.05)
    request.join(30)

    assert outcome[0].status_code == 400, outcome[0].text
    assert outcome[0].json()["message"] == "This username is taken."
    assert list(User.objects.values_list("username", flat=True)) == ["racer"]


def test_concurrent_sign_ups_of_one_name_in_any_case_make_one_account(web: str) -> None:
    names = ["crowd", "Crowd", "CROWD", "cRoWd", "crowD", "CRowd", "ｃｒｏｗｄ", "crOWD"]
    barrier = threading.Barrier(len(names))
    codes: list[int] = []

    def sign_up(name: str) -> None:
        barrier.wait()
        codes.append(_sign_up(web, name).status_code)

    threads = [threading.Thread(target=sign_up, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(codes) == [201] + [400] * (len(names) - 1)
    assert User.objects.count() == 1


def test_sign_in_finds_the_account_whatever_the_case(web: str) -> None:
    ShopClient(web).register_and_login("Nora")

    for typed in ("nora", "NORA", "ｎｏｒａ"):
        response = requests.post(f"{web}/authorizations/",
                                 json={"username": typed, "password": PASSWORD}, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["username"] == "Nora"
    wrong = requests.post(f"{web}/authorizations/",
                          json={"username": "NORA", "password": "not-the-pass"}, timeout=10)
    assert wrong.status_code == 400


def test_storefront_sign_in_finds_the_account_whatever_the_case(client: Client) -> None:
    user = UserFactory(username="nils", password=PASSWORD)

    response = client.post("/login/", {"username": "NILS", "password": PASSWORD})

    assert response.status_code == 302, response.content[:500]
    assert client.session["_auth_user_id"] == str(user.pk)


def test_admin_user_forms_refuse_a_case_twin_and_still_work(admin_client: Client) -> None:
    UserFactory(username="olga")
    form = {"username": "OLGA", "password1": PASSWORD, "password2": PASSWORD,
            "usable_password": "true"}

    twin = admin_client.post("/admin/shop/user/add/", form)

    assert twin.status_code == 200  # the form again, with the error
    assert "already exists" in twin.content.decode()
    assert not User.objects.filter(username="OLGA").exists()
    created = admin_client.post("/admin/shop/user/add/", {**form, "username": "pavel"})
    assert created.status_code == 302
    pavel = User.objects.get(username="pavel")

    change = admin_client.get(f"/admin/shop/user/{pavel.pk}/change/")
    data = {**change.context["adminform"].form.initial, "username": "Olga",
            "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
            "last_login_0": "", "last_login_1": ""}
    data = {key: value for key, value in data.items()
            if value is not None and key not in ("groups", "user_permissions", "date_joined",
                                                 "last_login", "password")}
    renamed = admin_client.post(f"/admin/shop/user/{pavel.pk}/change/", data)

    assert renamed.status_code == 200, renamed.content[:500]
    assert "This username is taken." in renamed.content.decode()
    assert User.objects.get(pk=pavel.pk).username == "pavel"
    data["username"] = "pavel.b"
    assert admin_client.post(f"/admin/shop/user/{pavel.pk}/change/", data).status_code == 302
    assert User.objects.get(pk=pavel.pk).username == "pavel.b"
