"""Records an operator reads but does not edit: a user's dates, API tokens. No date widget on
any of them (Django's date widgets warn when the browser's zone is not the shop's)."""
import pytest
from django.test import Client
from knox.models import AuthToken

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_a_users_dates_are_shown_not_edited(operator_client: Client) -> None:
    buyer = UserFactory()

    page = operator_client.get(f"/admin/shop/user/{buyer.pk}/change/").content.decode()

    assert 'name="last_login_0"' not in page and 'name="date_joined_0"' not in page
    assert "vDateField" not in page
    assert "Date joined" in page and 'name="username"' in page


def test_api_tokens_can_be_revoked_not_made_or_edited(operator_client: Client) -> None:
    token, _ = AuthToken.objects.create(user=UserFactory())

    assert operator_client.get("/admin/knox/authtoken/add/").status_code == 403
    page = operator_client.get(f"/admin/knox/authtoken/{token.pk}/change/")
    assert page.status_code == 200
    assert 'name="expiry_0"' not in page.content.decode()
    assert 'type="submit" value="Save"' not in page.content.decode()
    response = operator_client.post(f"/admin/knox/authtoken/{token.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not AuthToken.objects.filter(pk=token.pk).exists()
