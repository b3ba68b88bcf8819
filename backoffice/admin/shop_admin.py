from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from knox.admin import AuthTokenAdmin as KnoxTokenAdmin
from knox.models import AuthToken

from backoffice.admin import actions
from backoffice.admin.payment_admin import (
    PaymentEventInline,
    PaymentInline,
    RefundInline,
    operator_may,
)
from shop.models import SKU, OrderGoods, OrderInfo, User

# The lists are wide (payment events have ten columns): they get the whole width, the index
# page and the breadcrumbs lead to the other models.
admin.site.enable_nav_sidebar = False
admin.site.site_header = "Shop payments administration"
admin.site.site_title = "Shop payments"


@admin.register(User)
class ShopUserAdmin(UserAdmin):
    # Records, not settings; and no date widgets, which warn an operator whose browser is in
    # another zone than the shop's.
    readonly_fields = ["last_login", "date_joined"]


admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class TokenAdmin(KnoxTokenAdmin):
    """API tokens come from signing in and are stored hashed: an operator can see and delete
    (revoke) them, not make or edit one."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(SKU)
class SKUAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "price", "stock"]
    search_fields = ["name"]


class OrderGoodsInline(admin.TabularInline):
    model = OrderGoods
    extra = 0
    can_delete = False
    readonly_fields = ["sku", "count", "price"]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(OrderInfo)
class OrderInfoAdmin(admin.ModelAdmin):
    list_display = ["order_id", "user", "total_amount", "status", "created_at", "updated_at"]
    list_filter = ["status"]
    search_fields = ["order_id", "user__username", "payments__trade_id"]
    list_select_related = ["user"]
    # Only the payment services move an order away from UNPAID.
    readonly_fields = ["order_id", "user", "total_amount", "status", "created_at", "updated_at"]
    inlines = [OrderGoodsInline, PaymentInline, RefundInline, PaymentEventInline]
    actions = ["query_alipay_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_query_alipay_permission(self, request: HttpRequest) -> bool:
        return operator_may(request, "query_alipay")

    @admin.action(description="Query Alipay now", permissions=["query_alipay"])
    def query_alipay_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        for order_id in queryset.values_list("order_id", flat=True):
            try:
                outcome = actions.order_query_now(order_id=order_id)
            except Exception as exc:  # one failing order must not hide the others' outcomes
                self.message_user(request, f"{order_id}: the query failed ({exc}).",
                                  messages.ERROR)
                continue
            level = _LEVELS.get(outcome, messages.WARNING)
            self.message_user(request, f"{order_id}: {_OUTCOMES.get(outcome, outcome)}", level)


# Failures look like failures: only a paid or settled order is a success.
_LEVELS = {"applied": messages.SUCCESS, "settled": messages.SUCCESS, "stored": messages.SUCCESS,
           "error": messages.ERROR, "rejected": messages.ERROR}
_OUTCOMES = {
    "settled": "not unpaid any more; nothing to ask.",
    "applied": "Alipay reports it paid; the payment is applied.",
    "unpaid": "Alipay does not report it paid (yet).",
    "error": "Alipay could not be asked; reconciliation will try again soon.",
    "stored": "Alipay reports it paid; the payment is stored and will be applied by a worker.",
    "rejected": "Alipay reports a payment that does not match the order; see its history.",
    "recorded": "Alipay reports a trade that needs no action.",
}
