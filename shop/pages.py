"""The storefront's HTML pages; the data they show and change goes through the JSON API."""
import re
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.decorators import login_required
from django.contrib.auth.password_validation import password_validators_help_texts
from django.contrib.auth.views import LoginView, LogoutView
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET

from shop import selectors, services
from shop.apis import authenticated_user
from shop.converters import OrderIdConverter
from shop.models import OrderInfo

ORDER_ID = re.compile(OrderIdConverter.regex)

# What a buyer reads for each status; the API keeps the status names themselves.
STATUS_WORDS = {
    OrderInfo.Status.UNPAID.name: "Awaiting payment",
    OrderInfo.Status.UNSEND.name: "Paid - preparing shipment",
    OrderInfo.Status.UNRECEIVED.name: "Shipped",
    OrderInfo.Status.UNCOMMENT.name: "Awaiting review",
    OrderInfo.Status.FINISHED.name: "Completed",
    OrderInfo.Status.CANCELED.name: "Canceled",
    OrderInfo.Status.REFUNDED.name: "Refunded",
}
# Finer words the pages' scripts use once the order's payment status says more: why a
# canceled order was canceled, and a paid order with part of its money refunded.
STATUS_DETAIL_WORDS = {
    "EXPIRED": "Expired unpaid",
    "CANCELED_BY_BUYER": "Canceled by you",
    "PARTLY_REFUNDED": "Partly refunded",
}
BUYER_WORDS = {**STATUS_WORDS, **STATUS_DETAIL_WORDS}


@dataclass(frozen=True)
class OrderRow:
    order: OrderInfo
    status_words: str
    pay_by: datetime


def _order_row(order: OrderInfo) -> OrderRow:
    return OrderRow(order, STATUS_WORDS[order.status_name], selectors.order_pay_deadline(order))


class SignInView(LoginView):
    template_name = "shop/login.html"
    redirect_authenticated_user = True
    next_page = "/"


class SignOutView(LogoutView):
    next_page = "/"


@require_GET
def sign_up(request: HttpRequest) -> HttpResponse:
    """The form posts to the API (`POST /users/`), then signs in through the sign-in view."""
    next_url = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        next_url = ""
    if request.user.is_authenticated:
        return redirect(next_url or "storefront")
    return render(request, "shop/signup.html", {
        "next": next_url,
        "username_rule": services.USERNAME_RULE,
        "password_rules": password_validators_help_texts(),
    })


@require_GET
def storefront(request: HttpRequest) -> HttpResponse:
    return render(request, "shop/storefront.html", {"skus": selectors.sku_list()})


@require_GET
@login_required
def my_orders(request: HttpRequest) -> HttpResponse:
    user = authenticated_user(request)
    orders = selectors.order_list(user=user)[:100]
    # Just placed (the storefront sends the buyer here with its number): confirm it.
    placed_id = request.GET.get("placed", "")
    placed = (selectors.order_get(user=user, order_id=placed_id)
              if ORDER_ID.fullmatch(placed_id) else None)
    return render(request, "shop/my_orders.html", {
        "rows": [_order_row(order) for order in orders],
        "placed": _order_row(placed) if placed is not None else None,
        "status_words": BUYER_WORDS,
    })


@require_GET
@login_required
def order_page(request: HttpRequest, order_id: str) -> HttpResponse:
    """One order for its buyer: the order's part here; the page's script adds the payment's
    (paid when, trade number, refunds, why it was canceled) from its payment status."""
    order = selectors.order_get(user=authenticated_user(request), order_id=order_id)
    if order is None:
        raise Http404("No such order.")
    return render(request, "shop/order.html", {
        "row": _order_row(order),
        "status_words": BUYER_WORDS,
    })


@require_GET
def pay_success(request: HttpRequest) -> HttpResponse:
    """Where Alipay sends the buyer back; the page's script hands the parameters to the API.

    Opened without any (a bookmark, a typed address), there is nothing to confirm. Opened
    with only an order number and no signature (the cashier's "back to the shop" after the
    buyer canceled there), there is nothing to confirm either: that order's page says where
    it stands.
    """
    order_id = request.GET.get("out_trade_no", "")
    if "sign" not in request.GET and ORDER_ID.fullmatch(order_id):
        return redirect("my-order", order_id=order_id)
    return render(request, "shop/pay_success.html", {"returned": bool(request.GET)})
