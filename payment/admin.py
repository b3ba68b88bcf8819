from django.contrib import admin

from payment.models import Payment, PaymentAttempt, PaymentEvent


@admin.register(PaymentEvent)
class PaymentEventAdmin(admin.ModelAdmin):
    list_display = ["id", "source", "out_trade_no", "trade_no", "state", "attempts", "received_at"]
    list_filter = ["state", "source"]
    search_fields = ["out_trade_no", "trade_no", "order__order_id"]
    readonly_fields = [f.name for f in PaymentEvent._meta.fields]


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["trade_id", "order", "amount", "source", "status", "created_at"]
    list_filter = ["status", "source"]
    search_fields = ["trade_id", "order__order_id"]


@admin.register(PaymentAttempt)
class PaymentAttemptAdmin(admin.ModelAdmin):
    list_display = ["order", "amount", "started_at", "links_issued", "checks", "next_check_at"]
    search_fields = ["order__order_id"]
