"""The payment API: thin views that record what arrived and hand it to the workers."""
import logging
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ParseError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payment import selectors, services
from payment.models import Payment, PaymentEvent
from shop.apis import authenticated_user

logger = logging.getLogger(__name__)

State = PaymentEvent.State


def _remote_addr(request: Request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _request_params(request: Request) -> dict[str, Any]:
    """Query string and body (form or JSON) merged; the body wins."""
    params: dict[str, Any] = dict(request.query_params.lists())
    try:
        body = request.data
    except ParseError:
        raise services.PaymentError("The request body cannot be read.") from None
    if hasattr(body, "lists"):
        params.update(dict(body.lists()))
    elif isinstance(body, dict):
        params.update(body)
    elif body:
        raise services.PaymentError("The request body must be a form or a JSON object.")
    return params


class PaymentLinkApi(APIView):
    @extend_schema(responses={200: dict, 400: OpenApiResponse(description="{message}")})
    def get(self, request: Request, order_id: str) -> Response:
        try:
            url = services.payment_link_create(user=authenticated_user(request), order_id=order_id)
        except services.PaymentError as exc:
            return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response({"alipay_url": url})


class PaymentStatusApi(APIView):
    """Alipay's return parameters, as the pay_success page hands them over.

    Authenticated by Alipay's signature, not by the buyer's session.
    """

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(
        responses={
            200: OpenApiResponse(description="{trade_id}: the payment is applied"),
            202: OpenApiResponse(description="{status: processing, order_id}"),
            400: OpenApiResponse(description="{message}: not Alipay's return parameters"),
            403: OpenApiResponse(description="{message}: rejected"),
            409: OpenApiResponse(description="{message, order_id, refund}: paid after the "
                                             "order was canceled; being refunded"),
        }
    )
    def put(self, request: Request) -> Response:
        try:
            params = services.params_clean(_request_params(request))
        except services.PaymentError as exc:
            return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        try:
            services.inbound_params_check(params)
        except services.PaymentError as exc:
            # Kept for the record, never processed.
            services.event_record(
                source=PaymentEvent.Source.RETURN, params=params,
                remote_addr=_remote_addr(request), state=State.REJECTED, reason=str(exc),
            )
            return Response({"message": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        event, _ = services.event_record(
            source=PaymentEvent.Source.RETURN, params=params, remote_addr=_remote_addr(request)
        )
        event = services.event_wait(event_id=event.pk, timeout=settings.PAYMENT_STATUS_WAIT)
        if event.state == State.APPLIED:
            payment = selectors.payment_for_trade(trade_no=event.trade_no)
            if payment is not None and payment.status != Payment.Status.APPLIED:
                return Response(
                    {"message": "The order was closed before this payment arrived; the "
                                "payment is being refunded.",
                     "order_id": event.out_trade_no, "refund": payment.status},
                    status=status.HTTP_409_CONFLICT,
                )
            return Response({"trade_id": event.trade_no})
        if event.state in (State.REJECTED, State.DEAD, State.RECORDED):
            return Response(
                {"message": "The payment could not be verified with Alipay.",
                 "order_id": event.out_trade_no},
                status=status.HTTP_403_FORBIDDEN,
            )
        return Response(
            {"status": "processing", "order_id": event.out_trade_no},
            status=status.HTTP_202_ACCEPTED,
        )

    post = put


class OrderPaymentStatusApi(APIView):
    @extend_schema(responses={200: dict})
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
    remote_addr = request.META.get("REMOTE_ADDR") or None
    try:
        params = services.params_clean(dict(request.POST.lists()))
        services.inbound_params_check(params)
    except services.PaymentError as exc:
        try:
            services.event_record(
                source=PaymentEvent.Source.NOTIFY,
                params={key: str(value) for key, value in request.POST.items()},
                remote_addr=remote_addr, state=State.REJECTED, reason=str(exc),
            )
        except (DatabaseError, services.PaymentError):
            pass
        logger.warning("notification refused from %s: %s", remote_addr, exc)
        return HttpResponse("fail", content_type="text/plain", status=400)
    try:
        services.event_record(
            source=PaymentEvent.Source.NOTIFY, params=params, remote_addr=remote_addr
        )
    except DatabaseError as exc:
        logger.error("notification not stored out_trade_no=%s error=%s",
                     params.get("out_trade_no"), type(exc).__name__)
        return HttpResponse("fail", content_type="text/plain", status=503)
    return HttpResponse("success", content_type="text/plain")
