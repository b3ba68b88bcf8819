"""The payment API for buyers and staff: pay links, an order's payment status, the buyer's
cancel, refunds.

The two endpoints Alipay and the buyer's browser hit after a payment are not here: they are
the intake's own ASGI app (payment/intake/asgi.py), routed in config/asgi.py and config/urls.py.
"""
import logging
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.parsers import ExactNumbersJSONParser
from payment import cancel, selectors
from payment.api.serializers import (
    MessageSerializer,
    PaymentLinkSerializer,
    PaymentStatusSerializer,
    RefundInputSerializer,
    RefundSerializer,
)
from payment.errors import PaymentError
from payment.links import channel_for_device, payment_link_create
from payment.models import PayChannel, Refund
from payment.refunds.requests import (
    IdempotencyKeyReused,
    RefundConflict,
    RefundError,
    RefundInvalid,
    RefundOrderNotFound,
    idempotency_key_check,
    refund_request,
)
from shop.apis import authenticated_user
from shop.serializers import OrderDetailSerializer

logger = logging.getLogger(__name__)


class PaymentLinkApi(APIView):
    @extend_schema(
        parameters=[OpenApiParameter(
            "channel", OpenApiTypes.STR, OpenApiParameter.QUERY, enum=["page", "wap"],
            description="Alipay's cashier: `page` (desktop, alipay.trade.page.pay) or `wap` "
                        "(mobile web, alipay.trade.wap.pay); without it, the device's: a phone "
                        "or tablet user agent, or `Sec-CH-UA-Mobile: ?1`, gets `wap`",
        )],
        responses={
            200: PaymentLinkSerializer,
            400: OpenApiResponse(MessageSerializer, description="missing, someone else's or "
                                 "not awaiting payment (the seed's 400, kept as its "
                                 "contract), or an unknown channel"),
        },
    )
    def get(self, request: Request, order_id: str) -> Response:
        asked = request.query_params.get("channel")
        if asked is not None and asked not in PayChannel.values:
            return Response({"message": "channel must be page or wap."},
                            status=status.HTTP_400_BAD_REQUEST)
        channel = PayChannel(asked) if asked else channel_for_device(
            user_agent=request.headers.get("User-Agent", ""),
            ua_mobile_hint=request.headers.get("Sec-CH-UA-Mobile", ""))
        try:
            url = payment_link_create(user=authenticated_user(request), order_id=order_id,
                                      channel=channel)
        except PaymentError as exc:
            return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response({"alipay_url": url})


class OrderPaymentStatusApi(APIView):
    @extend_schema(responses={200: PaymentStatusSerializer,
                              404: OpenApiResponse(MessageSerializer, description="not yours")})
    def get(self, request: Request, order_id: str) -> Response:
        order = selectors.order_for_user(user=authenticated_user(request), order_id=order_id)
        if order is None:
            return Response({"message": "Order not found."}, status=status.HTTP_404_NOT_FOUND)
        status_data = selectors.order_payment_status(order=order)
        return Response(PaymentStatusSerializer(status_data).data)


class OrderCancelApi(APIView):
    """The buyer cancels an unpaid order; its Alipay trade is closed first."""

    @extend_schema(
        summary="Cancel an unpaid order (its buyer)",
        request=None,
        responses={
            200: OrderDetailSerializer,
            404: OpenApiResponse(MessageSerializer, description="not yours, or no such order"),
            409: OpenApiResponse(MessageSerializer, description="not awaiting payment: paid "
                                 "(also when Alipay says it was paid just now), canceled or "
                                 "expired"),
            503: OpenApiResponse(MessageSerializer, description="Alipay could not be asked "
                                 "to close the trade; the order is still unpaid"),
        },
    )
    def post(self, request: Request, order_id: str) -> Response:
        try:
            order = cancel.order_cancel(user=authenticated_user(request), order_id=order_id)
        except cancel.CancelOrderNotFound as exc:
            return Response({"message": str(exc)}, status=status.HTTP_404_NOT_FOUND)
        except cancel.CancelConflict as exc:
            return Response({"message": str(exc)}, status=status.HTTP_409_CONFLICT)
        except cancel.CancelUnavailable as exc:
            return Response({"message": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response(OrderDetailSerializer(order).data)


class StaffMayRefund(BasePermission):
    """Staff holding the operators' refund permission (`payment.refund_payment`)."""

    message = "Only staff allowed to refund payments may ask for a refund."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_staff and user.has_perm("payment.refund_payment"))


class OrderRefundsApi(APIView):
    permission_classes = [IsAuthenticated, StaffMayRefund]
    # The amount is read as written: a JSON float would make 1e1 into 10.0.
    parser_classes = [ExactNumbersJSONParser, FormParser, MultiPartParser]

    @extend_schema(
        summary="Refund part or all of an order's payment (staff)",
        request=RefundInputSerializer,
        parameters=[OpenApiParameter(
            "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
            description="1 to 200 visible ASCII characters but the comma, sent once; the "
                        "sender's own: a repeat of the same request by the same staff member "
                        "with the same key returns the refund it made (200), never a second",
        )],
        responses={
            201: RefundSerializer,
            200: OpenApiResponse(RefundSerializer, description="the refund an earlier request "
                                                               "of this staff member with this "
                                                               "Idempotency-Key made"),
            400: OpenApiResponse(description="{message}: bad amount, reason or key"),
            403: OpenApiResponse(description="{message}: not staff with payment.refund_payment"),
            404: OpenApiResponse(description="{message}: no such order"),
            409: OpenApiResponse(description="{message}: the order is not paid, or the amount "
                                             "is more than is left to refund"),
            422: OpenApiResponse(description="{message}: the Idempotency-Key was used for "
                                             "another request"),
        },
    )
    def post(self, request: Request, order_id: str) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            try:
                idempotency_key_check(key)
            except RefundInvalid as exc:
                return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        data = RefundInputSerializer(data=request.data)
        if not data.is_valid():
            return Response({"message": _first_error(data.errors), **data.errors},
                            status=status.HTTP_400_BAD_REQUEST)
        try:
            requested = refund_request(
                order_id=order_id, amount=data.validated_data["amount"],
                reason=data.validated_data["reason"], requested_by=authenticated_user(request),
                source=Refund.Source.STAFF_API, idempotency_key=key or "",
            )
        except RefundOrderNotFound as exc:
            return Response({"message": str(exc)}, status=status.HTTP_404_NOT_FOUND)
        except RefundConflict as exc:
            return Response({"message": str(exc)}, status=status.HTTP_409_CONFLICT)
        except IdempotencyKeyReused as exc:
            return Response({"message": str(exc)},
                            status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        except RefundError as exc:
            return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(RefundSerializer(requested.refund).data,
                        status=status.HTTP_201_CREATED if requested.created else status.HTTP_200_OK)


def _first_error(errors: Any) -> str:
    """One line for the `message` of a refused request body: "amount: An amount is ..."."""
    field, messages = next(iter(errors.items()))
    return f"{field}: {messages[0]}" if field != "non_field_errors" else str(messages[0])
