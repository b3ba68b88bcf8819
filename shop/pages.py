"""The storefront's HTML pages; the data they show and change goes through the JSON API."""
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView, LogoutView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from shop import selectors
from shop.apis import authenticated_user


class SignInView(LoginView):
    template_name = "shop/login.html"
    redirect_authenticated_user = True
    next_page = "/"


class SignOutView(LogoutView):
    next_page = "/"


@require_GET
def storefront(request: HttpRequest) -> HttpResponse:
    return render(request, "shop/storefront.html", {"skus": selectors.sku_list()})


@require_GET
@login_required
def my_orders(request: HttpRequest) -> HttpResponse:
    orders = selectors.order_list(user=authenticated_user(request))[:100]
    return render(request, "shop/my_orders.html", {"orders": orders})


@require_GET
def pay_success(request: HttpRequest) -> HttpResponse:
    """Where Alipay sends the buyer back; the page's script hands the parameters to the API."""
    return render(request, "shop/pay_success.html")
