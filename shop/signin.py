"""Sign-in protection: failed sign-ins counted per account and per client, expiring API tokens.

Every sign-in (`POST /authorizations/`, the storefront's `/login/`, `/admin/login/`) goes
through `django.contrib.auth.authenticate`; django-axes' backend refuses it while the account
or the client address is locked, and its signal handler records each failure in the database,
so the count holds across web processes. A success does not wipe the count: otherwise an
attacker could clear the failures made from one address by signing in to an account of their
own. Failures older than the cool-off no longer count. Failures are counted under the
account's name as sign-in resolves it (`account_key`): "VICTIM" or "ｖｉｃｔｉｍ" are guesses at
"victim" and count against it.

API tokens are django-rest-knox's: one per sign-in, stored hashed, each with its own expiry.
"""
import math
from typing import Any

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from shop.models import User


class FailedSignInHandler(AxesDatabaseHandler):
    """Axes' database handler, with a limit of its own for the client address.

    An office behind one address may see several people mistype; an account sees only its
    owner. So the client's limit (LOGIN_FAILURES_PER_CLIENT) is set apart from the account's
    (AXES_FAILURE_LIMIT).
    """

    def get_failures(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        recent = AccessAttempt.objects.filter(attempt_time__gte=get_cool_off_threshold(request))
        username = get_client_username(request, credentials)
        by_account = _failures(recent.filter(username=username)) if username is not None else 0
        by_client = _failures(recent.filter(ip_address=request.axes_ip_address))  # type: ignore[attr-defined]
        account_limit = int(settings.AXES_FAILURE_LIMIT)
        if by_client >= settings.LOGIN_FAILURES_PER_CLIENT:
            # Axes compares this one number with AXES_FAILURE_LIMIT.
            return max(by_account, account_limit)
        return by_account


def account_key(request: HttpRequest, credentials: dict[str, Any] | None = None) -> str | None:
    """The name axes records and counts a sign-in under (AXES_USERNAME_CALLABLE): the one
    account the given name signs in to, however it was spelled (case, Unicode form)."""
    # The API and both forms name the field as the user model does (axes' default too).
    field = User.USERNAME_FIELD
    username = (credentials or getattr(request, "data", request.POST)).get(field)
    if not isinstance(username, str):
        return None
    # NFKC may lengthen a name 18-fold ("ﷺ"): past axes' column it names no account (those
    # have 150 characters at most), so cutting it merges only names nobody signs in with.
    limit = AccessAttempt._meta.get_field("username").max_length
    return User.objects.username_key(username)[:limit]


def _failures(attempts: QuerySet[AccessAttempt]) -> int:
    return int(attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0)


def lockout_seconds() -> int:
    """How long a locked account or client waits, at most: the last failure counts that long."""
    cool_off = get_cool_off()
    return math.ceil(cool_off.total_seconds()) if cool_off else 0


def lockout_message() -> str:
    seconds = lockout_seconds()
    wait = f"{math.ceil(seconds / 60)} minutes" if seconds >= 120 else f"{seconds} seconds"
    return (
        "Too many failed sign-ins for this account or from this address. "
        f"Try again in {wait}."
    )


def lockout_page(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """The page axes' middleware answers a locked-out sign-in form with (storefront, admin)."""
    response = render(
        request, "shop/signin_locked.html", {"message": lockout_message()}, status=429
    )
    response["Retry-After"] = str(lockout_seconds())
    return response


def request_locked_out(request: Request | HttpRequest) -> bool:
    """Whether axes refused or locked this sign-in (it marks the request it was given)."""
    return bool(getattr(request, "axes_locked_out", False))


class ExpiringTokenAuthentication(TokenAuthentication):
    """knox's `Authorization: Token <token>`, found by its digest in one query.

    knox's own check answers an expired token as an unknown one; a client should be told to
    sign in again. A header that is not ASCII is an invalid token, not a server error.
    """

    def authenticate_credentials(self, token: bytes) -> tuple[User, AuthToken]:
        try:
            key = token.decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid token.") from None
        auth_token = AuthToken.objects.select_related("user").filter(
            digest=hash_token(key)
        ).first()
        if auth_token is None:
            raise AuthenticationFailed("Invalid token.")
        if auth_token.expiry is not None and auth_token.expiry <= timezone.now():
            raise AuthenticationFailed("Token has expired: sign in again.")
        user, _ = self.validate_user(auth_token)
        return user, auth_token


class ExpiringTokenScheme(KnoxTokenScheme):
    """The token in the OpenAPI schema: `Authorization: Token <token>`, as before."""

    target_class = "shop.signin.ExpiringTokenAuthentication"
    name = "tokenAuth"
