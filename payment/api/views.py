"""The payment API. The two endpoints Alipay and the buyer's browser hit after a payment are
lean Django views (no DRF, no session or CSRF machinery): they are authenticated by Alipay's
signature, record what arrived and hand it to the workers."""
import logging
import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.logs import log_ids
from payment import metrics, selectors, wakeups
from payment.api.serializers import (
    MessageSerializer,
    PaymentLinkSerializer,
    PaymentStatusSerializer,
    RefundInputSerializer,
    RefundSerializer,
)
from payment.errors import PaymentError, Throttled
from payment.intake import core
from payment.links import payment_link_create
from payment.models import EventSource, Refund
from payment.refunds.requests import (
    IdempotencyKeyReused,
    RefundConflict,
    RefundError,
    RefundOrderNotFound,
    refund_request,
)
from shop.apis import authenticated_user

logger = logging.getLogger(__name__)


def _remote_addr(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


class PaymentLinkApi(APIView):
    @extend_schema(responses={
        200: PaymentLinkSerializer,
        400: OpenApiResponse(MessageSerializer, description="missing, someone else's or not "
                             "awaiting payment (the seed's 400, kept as its contract)"),
    })
    def get(self, request: Request, order_id: str) -> Response:
        try:
            url = payment_link_create(user=authenticated_user(request), order_id=order_id)
        except PaymentError as exc:
            return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response({"alipay_url": url})


@csrf_exempt
@require_http_methods(["PUT", "POST"])
async def payment_status(request: HttpRequest) -> HttpResponse:
    """Alipay's return parameters, as the pay_success page hands them over.

    200 `{trade_id}` once applied (also on reload, answered from the payment without a
    write), 202 `{status: processing, order_id}` when not settled within
    PAYMENT_STATUS_WAIT, 403 when rejected, 409 when paid after the order was canceled, 400
    for what is not Alipay's signed return. The wait holds no thread: it blocks on Redis
    from the event loop.
    """
    remote_addr = _remote_addr(request)
    params: dict[str, str] = {}
    try:
        await sync_to_async(core.status_throttle)(remote_addr)
        params = core.params_clean(core.params_parse(
            query=request.META.get("QUERY_STRING", ""), body=request.body,
            content_type=request.content_type or ""))
        receipt = await sync_to_async(core.return_receive)(
            params=params, remote_addr=remote_addr)
    except PaymentError as exc:
        error = await sync_to_async(core.refusal)(
            source=EventSource.RETURN, params=params, remote_addr=remote_addr, error=exc)
        return _json(core.refused_answer(error))
    answer = receipt.answer
    if not answer.is_final and receipt.event_id is not None:
        event_id = receipt.event_id
        await wakeups.event_settled_wait(
            event_id=event_id, timeout=settings.PAYMENT_STATUS_WAIT,
            is_settled=lambda: sync_to_async(core.event_is_settled)(event_id=event_id),
        )
        answer = await sync_to_async(core.stored_event_answer)(event_id=event_id)
    return _json(answer)


def _json(answer: core.Answer) -> JsonResponse:
    response = JsonResponse(answer.body, status=answer.status)
    if answer.retry_after:
        response["Retry-After"] = str(answer.retry_after)
    return response


class OrderPaymentStatusApi(APIView):
    @extend_schema(responses={200: PaymentStatusSerializer,
                              404: OpenApiResponse(MessageSerializer, description="not yours")})
    def get(self, request: Request, order_id: str) -> Response:
        order = selectors.order_for_user(user=authenticated_user(request), order_id=order_id)
        if order is None:
            return Response({"message": "Order not found."}, status=status.HTTP_404_NOT_FOUND)
        return Response(selectors.order_payment_status(order=order))


@csrf_exempt
@require_POST
def alipay_notify(request: HttpRequest) -> HttpResponse:
    """Alipay's asynchronous notification: store it, then answer `success`.

    `success` is answered only once the notification is durably stored (or was already);
    Alipay delivers again after `fail`, so nothing is lost when the database is away.
    """
    remote_addr = _remote_addr(request)
    params: dict[str, str] = {}
    try:
        content_type = request.content_type or ""
        if content_type not in (core.FORM, ""):
            raise PaymentError("A notification is a form.")
        # Parsed by the intake, not request.POST: a GBK notification is decoded as GBK.
        params = core.params_clean(core.params_parse(query=b"", body=request.body,
                                                         content_type=content_type))
        core.notification_receive(params=params, remote_addr=remote_addr)
    except PaymentError as exc:
        try:
            error = core.refusal(source=EventSource.NOTIFY, params=params,
                                   remote_addr=remote_addr, error=exc)
        except DatabaseError as db_exc:
            return _not_stored(params, db_exc)
        return HttpResponse("fail", content_type="text/plain",
                            status=429 if isinstance(error, Throttled) else 400)
    except DatabaseError as exc:
        return _not_stored(params, exc)
    return HttpResponse("success", content_type="text/plain")


def _not_stored(params: dict[str, str], exc: DatabaseError) -> HttpResponse:
    metrics.event_received(source=EventSource.NOTIFY, outcome="error")
    logger.error("notification not stored out_trade_no=%s error=%s",
                 params.get("out_trade_no"), type(exc).__name__,
                 extra=log_ids(order_id=params.get("out_trade_no"),
                               trade_no=params.get("trade_no")))
    return HttpResponse("fail", content_type="text/plain", status=503)


IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


class StaffMayRefund(BasePermission):
    """Staff holding the operators' refund permission (`payment.refund_payment`)."""

    message = "Only staff allowed to refund payments may ask for a refund."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_staff and user.has_perm("payment.refund_payment"))


class OrderRefundsApi(APIView):
    permission_classes = [IsAuthenticated, StaffMayRefund]

    @extend_schema(
        summary="Refund part or all of an order's payment (staff)",
        request=RefundInputSerializer,
        parameters=[OpenApiParameter(
            "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
            description="1 to 200 visible ASCII characters; a repeat of the same request "
                        "with the same key returns the refund it made (200), never a second",
        )],
        responses={
            201: RefundSerializer,
            200: OpenApiResponse(RefundSerializer, description="the refund an earlier request "
                                                               "with this Idempotency-Key made"),
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
        key = request.headers.get("Idempotency-Key", "")
        if key and not IDEMPOTENCY_KEY.fullmatch(key):
            return Response({"message": "Idempotency-Key must be 1 to 200 visible ASCII "
                                        "characters."}, status=status.HTTP_400_BAD_REQUEST)
        data = RefundInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            requested = refund_request(
                order_id=order_id, amount=data.validated_data["amount"],
                reason=data.validated_data["reason"], requested_by=authenticated_user(request),
                source=Refund.Source.STAFF_API, idempotency_key=key,
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
