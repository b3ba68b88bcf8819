"""The shop's HTTP API: thin views that validate, call one service or selector, serialize."""
import logging
from typing import Any, cast

from django.contrib.auth import authenticate
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, set_rollback
from rest_framework.views import exception_handler as drf_exception_handler

from shop import selectors, services, signin
from shop.models import User
from shop.serializers import (
    AuthorizationOutputSerializer,
    CredentialsSerializer,
    OrderDetailSerializer,
    OrderInputSerializer,
    OrderSerializer,
    SKUSerializer,
    UserOutputSerializer,
)

logger = logging.getLogger(__name__)


def authenticated_user(request: Request | HttpRequest) -> User:
    """The signed-in user of a view that requires authentication."""
    return cast(User, request.user)


DATABASE_AWAY_MESSAGE = "The shop cannot be reached right now; try again in a moment."
DATABASE_AWAY_RETRY_AFTER = "5"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus a `message` a person can read, Django validation errors as 400, and
    the database away (a restart, a failover) as 503, not a 500 with a stack trace."""
    if isinstance(exc, DjangoValidationError):
        return Response({"message": " ".join(exc.messages)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable during %s: %s", type(context.get("view")).__name__,
                       type(exc).__name__)
        set_rollback()
        return Response({"message": DATABASE_AWAY_MESSAGE},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": DATABASE_AWAY_RETRY_AFTER})
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "message" not in response.data:
        detail = response.data.get("detail")
        response.data = {"message": str(detail) if detail else "Invalid input.", **response.data}
    return response


class UserCreateApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(request=CredentialsSerializer, responses={201: UserOutputSerializer})
    def post(self, request: Request) -> Response:
        data = CredentialsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            user = services.user_create(**data.validated_data)
        except services.SignUpError as exc:
            return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


class AuthorizationApi(APIView):
    """Signing in gives each API client a token of its own; signing out revokes it."""

    def get_authenticators(self) -> list[BaseAuthentication]:
        # Signing in reads the body only: a stale token sent along must not stand in its way.
        # (drf-spectacular asks once before it has set a request.)
        if getattr(self.request, "method", None) == "DELETE":
            return [signin.ExpiringTokenAuthentication()]
        return []

    def get_permissions(self) -> list[BasePermission]:
        return [IsAuthenticated()] if self.request.method == "DELETE" else [AllowAny()]

    @extend_schema(
        request=CredentialsSerializer,
        responses={
            200: AuthorizationOutputSerializer,
            400: OpenApiResponse(description="{message}: wrong username or password"),
            429: OpenApiResponse(description="{message}: too many failed sign-ins for the "
                                             "account or from the address; see Retry-After"),
        },
    )
    def post(self, request: Request) -> Response:
        data = CredentialsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request, **data.validated_data)
        if signin.request_locked_out(request):
            return Response(
                {"message": signin.lockout_message()},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(signin.lockout_seconds())},
            )
        if user is None or not user.is_active:
            return Response(
                {"message": "Wrong username or password."}, status=status.HTTP_400_BAD_REQUEST
            )
        auth_token, token = services.token_create(user=user)
        return Response(AuthorizationOutputSerializer({
            "token": token, "expiry": auth_token.expiry, "user_id": user.pk,
            "username": user.get_username(),
        }).data)

    @extend_schema(
        request=None,
        responses={204: None, 401: OpenApiResponse(description="{message}: no valid token")},
    )
    def delete(self, request: Request) -> Response:
        services.token_revoke(auth_token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SKUListApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses={200: SKUSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(SKUSerializer(selectors.sku_list(), many=True).data)


class OrderListCreateApi(APIView):
    @extend_schema(responses={200: OrderSerializer(many=True)})
    def get(self, request: Request) -> Response:
        orders = selectors.order_list(user=authenticated_user(request))[:100]
        return Response(OrderSerializer(orders, many=True).data)

    @extend_schema(
        request=OrderInputSerializer,
        responses={201: OrderSerializer, 400: OpenApiResponse(description="{message}"),
                   409: OpenApiResponse(description="{message}: ORDER_MAX_UNPAID unpaid "
                                        "orders already; pay one or let it expire")},
    )
    def post(self, request: Request) -> Response:
        data = OrderInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        items = [(item["sku_id"], item["count"]) for item in data.validated_data["items"]]
        try:
            order = services.order_create(user=authenticated_user(request), items=items)
        except services.UnpaidOrdersLimitError as exc:
            return Response({"message": str(exc)}, status=status.HTTP_409_CONFLICT)
        except services.OrderError as exc:
            return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        logger.info("order created order_id=%s user_id=%s", order.order_id, request.user.pk)
        return Response(OrderSerializer(order).data, status=status.HTTP_201_CREATED)


class OrderDetailApi(APIView):
    @extend_schema(responses={200: OrderDetailSerializer})
    def get(self, request: Request, order_id: str) -> Response:
        order = selectors.order_get(user=authenticated_user(request), order_id=order_id)
        if order is None:
            raise Http404("No such order.")
        return Response(OrderDetailSerializer(order).data)
