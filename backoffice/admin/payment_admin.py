"""The operators' view of payments: history per order, dead events, and the few safe actions."""
import json
import secrets
from decimal import Decimal
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from backoffice.admin import actions
from payment.models import (
    AlipayCertificate,
    BillEntry,
    BillFinding,
    BillReport,
    EventState,
    Payment,
    PaymentAttempt,
    PaymentEvent,
    Refund,
    RefusedRequest,
)
from payment.refunds.ledger import refunds_committed
from payment.refunds.requests import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    IdempotencyKeyReused,
    RefundError,
    RefundInvalid,
    refund_amount_parse,
    refund_request,
)
from shop.models import User

NEEDS_ATTENTION = (EventState.DEAD, EventState.REJECTED)


def operator_may(request: HttpRequest, codename: str) -> bool:
    """Whether the signed-in user holds one of the operator's action permissions.

    Viewing the admin is not enough to act: each action that changes or sends something has
    its own permission (see the models' Meta), which a superuser holds implicitly.
    """
    return request.user.has_perm(f"payment.{codename}")


def _pretty_json(data: Any) -> str:
    return format_html(
        # Wrapped: a signature is one 344-character word that would overflow its box.
        '<pre class="raw-data" style="white-space:pre-wrap;word-break:break-all;'
        'max-width:60em">{}</pre>',
        json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False),
    )


class AttentionFilter(admin.SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("dead", "Dead events"), ("needs", "Needs attention (dead or rejected)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "dead":
            return queryset.filter(state=EventState.DEAD)
        if self.value() == "needs":
            return queryset.filter(state__in=NEEDS_ATTENTION)
        return queryset


@admin.register(PaymentEvent)
class PaymentEventAdmin(admin.ModelAdmin):
    list_display = ["id", "received_at", "source", "order_link", "trade_no", "state",
                    "attempts", "deliveries", "short_reason", "short_error"]
    list_filter = [AttentionFilter, "state", "source"]
    search_fields = ["out_trade_no", "trade_no", "order__order_id"]
    date_hierarchy = "received_at"
    list_select_related = ["order"]
    actions = ["reprocess_events"]
    fieldsets = [
        (None, {"fields": ["source", "state", "reason", "attempts", "deliveries", "last_error"]}),
        ("Trade", {"fields": ["order", "out_trade_no", "trade_no", "dedupe_key", "remote_addr"]}),
        ("As received", {"fields": ["raw_data_pretty"]}),
        ("Times", {"fields": ["received_at", "updated_at", "processed_at"]}),
    ]
    readonly_fields = [
        "source", "state", "reason", "attempts", "deliveries", "last_error", "order",
        "out_trade_no", "trade_no", "dedupe_key", "remote_addr", "raw_data_pretty",
        "received_at", "updated_at", "processed_at",
    ]
    change_list_template = "admin/payment/paymentevent/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # events only ever come from Alipay or the services

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the record of what arrived is never thrown away

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a record: shown read-only, no Save buttons; actions have their own

    @admin.display(description="raw data")
    def raw_data_pretty(self, obj: PaymentEvent) -> str:
        return _pretty_json(obj.raw_data)

    @admin.display(description="order", ordering="order__order_id")
    def order_link(self, obj: PaymentEvent) -> str:
        if obj.order_id is None:
            return obj.out_trade_no or "-"  # not one of our orders
        url = reverse("admin:shop_orderinfo_change", args=[obj.order_id])
        return format_html('<a href="{}">{}</a>', url, obj.order_id)

    @admin.display(description="reason")
    def short_reason(self, obj: PaymentEvent) -> str:
        return obj.reason[:60]

    @admin.display(description="last error")
    def short_error(self, obj: PaymentEvent) -> str:
        return obj.last_error[:60]

    def has_reprocess_event_permission(self, request: HttpRequest) -> bool:
        return operator_may(request, "reprocess_event")

    @admin.action(description="Re-process event (dead or received events)",
                  permissions=["reprocess_event"])
    def reprocess_events(self, request: HttpRequest, queryset: QuerySet) -> None:
        done: list[int] = []
        skipped: list[int] = []
        for event_id in queryset.values_list("pk", flat=True):
            (done if actions.event_reprocess(event_id=event_id) else skipped).append(event_id)
        if done:
            self.message_user(
                request, f"Sent {len(done)} event(s) to the workers again: "
                f"{', '.join(map(str, done))}.", messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request, f"Skipped {len(skipped)} event(s) that are neither dead nor received: "
                f"{', '.join(map(str, skipped))}.", messages.WARNING,
            )

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None
                        ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "dead_count": PaymentEvent.objects.filter(state=EventState.DEAD).count(),
            "attention_count": PaymentEvent.objects.filter(state__in=NEEDS_ATTENTION).count(),
            "can_reprocess": self.has_reprocess_event_permission(request),
        }
        return super().changelist_view(request, extra_context)


class PaymentEventInline(admin.TabularInline):
    """The order's payment history."""

    model = PaymentEvent
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["-received_at", "-id"]
    fields = ("received_at", "source", "state", "trade_no", "attempts", "deliveries", "reason",
              "last_error")
    readonly_fields = fields
    verbose_name_plural = "payment history"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PaymentInline(admin.TabularInline):
    model = Payment
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("trade_id", "amount", "source", "status", "note", "created_at", "refunded_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RefundInline(admin.TabularInline):
    """The refunds of a payment (or an order), in the ledger's words."""

    model = Refund
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["requested_at", "id"]
    fields = ("out_request_no", "amount", "state", "sub_code", "source", "requested_by",
              "reason", "attempts", "queries", "last_error", "requested_at", "succeeded_at",
              "failed_at")
    readonly_fields = fields
    verbose_name_plural = "refunds"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may see payments sees their refunds.
        return request.user.has_perm("payment.view_payment") or super().has_view_permission(
            request, obj)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RefundForm(forms.Form):
    """A refund's amount and reason, and the token that makes the form one refund.

    The token is rendered with the form and sent as the refund's idempotency key (the
    operator's own, as the API's keys are): a double click, or the same form sent again,
    finds the refund the first post made.
    """

    # Text, read by the API's parser: Django's DecimalField would strip spaces and take "1e1".
    amount = forms.CharField(strip=False, max_length=32,
                             widget=forms.TextInput(attrs={"inputmode": "decimal"}),
                             help_text="Yuan, such as 12.50; at most what is left to refund.")
    reason = forms.CharField(
        max_length=256, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="For the buyer: sent to Alipay as refund_reason and shown in the order's "
                  "payment status.",
    )
    form_token = forms.CharField(
        widget=forms.HiddenInput, max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        error_messages={"required": "This form is out of date: reload the page."})

    def clean_amount(self) -> Decimal:
        try:
            return refund_amount_parse(self.cleaned_data["amount"])
        except RefundInvalid as exc:
            raise forms.ValidationError(str(exc), code="invalid") from None


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["trade_id", "order", "amount", "source", "status", "created_at",
                    "refunded_at"]
    list_filter = ["status", "source"]
    search_fields = ["trade_id", "order__order_id", "refund_request_no"]
    list_select_related = ["order"]
    readonly_fields = ["order", "trade_id", "amount", "source", "status", "event",
                       "refund_request_no", "note", "created_at", "refunded_at"]
    inlines = [RefundInline]
    actions = ["refund_payments"]
    change_form_template = "admin/payment/payment/change_form.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_refund_payment_permission(self, request: HttpRequest) -> bool:
        return operator_may(request, "refund_payment")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a record: shown read-only, no Save buttons; actions have their own

    def get_urls(self) -> list[URLPattern]:
        refund = path("<int:object_id>/refund/", self.admin_site.admin_view(self.refund_view),
                      name="payment_payment_refund")
        return [refund, *super().get_urls()]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict | None = None) -> HttpResponse:
        payment = self.get_object(request, object_id)
        extra_context = {
            **(extra_context or {}),
            "can_refund": payment is not None and payment.status == Payment.Status.APPLIED
            and self.has_refund_payment_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def refund_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Refund part or all of a payment that paid its order: amount and reason."""
        if not (self.has_view_permission(request)
                and self.has_refund_payment_permission(request)):
            raise PermissionDenied
        payment = get_object_or_404(Payment.objects.select_related("order"), pk=object_id)
        change_url = reverse("admin:payment_payment_change", args=[payment.pk])
        form = RefundForm(request.POST or None,
                          initial={"form_token": secrets.token_urlsafe(24)})
        if request.method == "POST" and form.is_valid():
            try:
                requested = refund_request(
                    order_id=payment.order_id, amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"], requested_by=cast(User, request.user),
                    source=Refund.Source.OPERATOR, payment_id=payment.pk,
                    idempotency_key=form.cleaned_data["form_token"],
                )
            except IdempotencyKeyReused:
                form.add_error(None, "This form was already sent for another refund: reload "
                                     "the page to ask for a new one.")
            except RefundError as exc:
                form.add_error(None, str(exc))
            else:
                refund = requested.refund
                if requested.created:
                    self.message_user(
                        request, f"Refund {refund.out_request_no} of {refund.amount} sent to "
                        "the workers; its state shows below.", messages.SUCCESS)
                else:
                    self.message_user(
                        request, f"This form was sent already: refund {refund.out_request_no} "
                        f"of {refund.amount} is the one it asked for; its state shows below.",
                        messages.INFO)
                return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Refund payment {payment.trade_id}",
            "opts": self.model._meta,
            "payment": payment,
            "left": payment.amount - refunds_committed(payment_id=payment.pk),
            "refundable": payment.status == Payment.Status.APPLIED,
            "form": form,
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/payment/payment/refund_form.html", context)

    @admin.action(description="Refund (payments waiting for a refund)",
                  permissions=["refund_payment"])
    def refund_payments(self, request: HttpRequest, queryset: QuerySet) -> None:
        for payment in queryset:
            if payment.status == Payment.Status.REFUND_PENDING:
                actions.payment_refund_retry(payment=payment)
                self.message_user(
                    request, f"Refund of {payment.trade_id} sent to the workers.",
                    messages.SUCCESS,
                )
            elif payment.status == Payment.Status.APPLIED:
                self.message_user(
                    request, f"{payment.trade_id} paid its order: refund it with an amount and "
                    "a reason from its page (Refund…).",
                    messages.WARNING,
                )
            else:
                self.message_user(request, f"{payment.trade_id} is already refunded.",
                                  messages.INFO)


@admin.register(Refund)
class RefundAdmin(admin.ModelAdmin):
    """The refund ledger; read-only: refunds are asked for from a payment's page or the API."""

    list_display = ["out_request_no", "order", "amount", "state", "sub_code", "source",
                    "requested_by", "attempts", "requested_at", "succeeded_at"]
    list_filter = ["state", "source"]
    search_fields = ["out_request_no", "order__order_id", "payment__trade_id"]
    date_hierarchy = "requested_at"
    list_select_related = ["order", "requested_by"]
    readonly_fields = fields = (
        "order", "payment", "amount", "reason", "out_request_no", "idempotency_key", "state",
        "sub_code", "source", "requested_by", "attempts", "queries", "last_error",
        "confirmed_by", "next_attempt_at", "requested_at", "updated_at", "sent_at",
        "succeeded_at", "failed_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PaymentAttempt)
class PaymentAttemptAdmin(admin.ModelAdmin):
    list_display = ["order", "amount", "started_at", "links_issued", "checks",
                    "last_check_result", "next_check_at"]
    search_fields = ["order__order_id"]
    readonly_fields = ["order", "amount", "started_at", "last_started_at", "links_issued",
                       "next_check_at", "claimed_until", "checks", "last_checked_at",
                       "last_check_result"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a record: shown read-only, no Save buttons; actions have their own


@admin.register(RefusedRequest)
class RefusedRequestAdmin(admin.ModelAdmin):
    """Requests that were not Alipay's, counted per client and hour; read-only."""

    list_display = ["hour", "source", "remote_addr", "count", "reason", "out_trade_no",
                    "last_seen"]
    list_filter = ["source"]
    search_fields = ["remote_addr", "out_trade_no"]
    date_hierarchy = "hour"
    readonly_fields = fields = ("source", "remote_addr", "hour", "count", "reason",
                                "out_trade_no", "sample_pretty", "first_seen", "last_seen")

    @admin.display(description="sample (first request of the hour, no signature)")
    def sample_pretty(self, obj: RefusedRequest) -> str:
        return _pretty_json(obj.sample)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AlipayCertificate)
class AlipayCertificateAdmin(admin.ModelAdmin):
    """Alipay's certificates downloaded after a renewal (certificate mode); read-only. The
    dashboard lists every certificate in use, configured files included."""

    list_display = ["sn", "subject", "not_after", "trusted", "downloaded_at"]
    readonly_fields = fields = ("sn", "subject", "not_before", "not_after", "refusal",
                                "downloaded_at", "pem")

    @admin.display(boolean=True, description="chain held")
    def trusted(self, obj: AlipayCertificate) -> bool:
        return not obj.refusal

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class BillFindingInline(admin.TabularInline):
    model = BillFinding
    extra = 0
    can_delete = False
    readonly_fields = fields = ("outcome", "trade_no", "out_trade_no", "out_request_no",
                                "alipay_amount", "our_amount", "note")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class HasFindingsFilter(admin.SimpleListFilter):
    title = "findings"
    parameter_name = "findings"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "With findings"), ("no", "Balanced")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(findings__gt=0)
        if self.value() == "no":
            return queryset.filter(findings=0)
        return queryset


@admin.register(BillReport)
class BillReportAdmin(admin.ModelAdmin):
    """Each day against Alipay's bill: totals side by side, days with findings first."""

    list_display = ["bill_date", "state", "alipay_trades", "our_trades", "alipay_trade_amount",
                    "our_trade_amount", "alipay_refund_amount", "our_refund_amount", "matched",
                    "findings", "finished_at"]
    list_filter = [HasFindingsFilter, "state"]
    ordering = ["-findings", "-bill_date"]
    date_hierarchy = "bill_date"
    inlines = [BillFindingInline]
    readonly_fields = fields = (
        "bill_date", "state", "error", "alipay_trades", "our_trades", "alipay_trade_amount",
        "our_trade_amount", "alipay_refunds", "our_refunds", "alipay_refund_amount",
        "our_refund_amount", "matched", "findings", "entries_link", "runs", "started_at",
        "finished_at")

    @admin.display(description="bill lines")
    def entries_link(self, obj: BillReport) -> str:
        url = reverse("admin:payment_billentry_changelist") + f"?report__id__exact={obj.pk}"
        return format_html('<a href="{}">{} lines of the bill</a>', url,
                           obj.alipay_trades + obj.alipay_refunds)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BillEntry)
class BillEntryAdmin(admin.ModelAdmin):
    list_display = ["trade_no", "out_trade_no", "kind", "amount", "out_request_no",
                    "finished_at", "report"]
    list_filter = ["kind"]
    search_fields = ["trade_no", "out_trade_no", "out_request_no"]
    list_select_related = ["report"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# The admin's home page leads with the payments dashboard (backoffice/dashboard/views.py).
admin.site.index_template = "admin/payment/index.html"
