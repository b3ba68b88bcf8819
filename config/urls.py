from django.contrib import admin
from django.templatetags.static import static
from django.urls import path, register_converter
from django.views.generic import RedirectView
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from backoffice.dashboard.views import dashboard_view
from infra import health, metrics
from infra.asgi_bridge import asgi_view
from payment.api import views as payment_apis
from payment.intake import asgi as intake
from shop import apis as shop_apis
from shop import pages
from shop.converters import OrderIdConverter

register_converter(OrderIdConverter, "order_id")

urlpatterns = [
    # The operators' dashboard, inside the admin (its sign-in and staff check).
    path("admin/dashboard/", admin.site.admin_view(dashboard_view), name="admin-dashboard"),
    path("admin/", admin.site.urls),
    path("users/", shop_apis.UserCreateApi.as_view(), name="user-create"),
    path("authorizations/", shop_apis.AuthorizationApi.as_view(), name="authorizations"),
    path("skus/", shop_apis.SKUListApi.as_view(), name="sku-list"),
    path("orders/", shop_apis.OrderListCreateApi.as_view(), name="order-list"),
    path("orders/<order_id:order_id>/", shop_apis.OrderDetailApi.as_view(), name="order-detail"),
    path(
        "orders/<order_id:order_id>/payment/",
        payment_apis.PaymentLinkApi.as_view(),
        name="order-payment",
    ),
    path(
        "orders/<order_id:order_id>/payment/status/",
        payment_apis.OrderPaymentStatusApi.as_view(),
        name="order-payment-status",
    ),
    path(
        "orders/<order_id:order_id>/cancel/",
        payment_apis.OrderCancelApi.as_view(),
        name="order-cancel",
    ),
    path(
        "orders/<order_id:order_id>/refunds/",
        payment_apis.OrderRefundsApi.as_view(),
        name="order-refunds",
    ),
    # The intake and /metrics are plain ASGI apps, which the ASGI server (config/asgi.py)
    # runs ahead of Django; the same apps answer here for every other entry.
    path("payment/alipay/notify/", asgi_view(intake.django_app), name="alipay-notify"),
    path("payment/status/", asgi_view(intake.django_app), name="payment-status"),
    path("metrics", asgi_view(metrics.app), name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("", pages.storefront, name="storefront"),
    path("login/", pages.SignInView.as_view(), name="login"),
    path("logout/", pages.SignOutView.as_view(), name="logout"),
    path("signup/", pages.sign_up, name="signup"),
    path("my/orders/", pages.my_orders, name="my-orders"),
    path("my/orders/<order_id:order_id>/", pages.order_page, name="my-order"),
    path("pay_success.html", pages.pay_success, name="pay-success"),
    path("healthz", health.healthz, name="healthz"),
    # Pages without the shop's <link rel="icon"> (the admin's, the API docs): browsers ask here.
    path("favicon.ico", RedirectView.as_view(url=static("shop/favicon.svg")), name="favicon"),
]
