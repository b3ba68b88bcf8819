from django.conf import settings
from django.db import models

from shop.models import OrderInfo


class PayChannel(models.TextChoices):
    """Alipay's cashier a pay link opens: the desktop one, or the mobile web one on phones."""

    PAGE = "page", "desktop cashier (alipay.trade.page.pay)"
    WAP = "wap", "mobile cashier (alipay.trade.wap.pay)"


class PaymentAttempt(models.Model):
    """An order's pay link with its reconciliation schedule: what reconciliation and expiry
    look for.

    One row per order, made when its first pay link is issued: `started_at` is the first
    link, `last_started_at` the latest. The `next_check_at`/`claimed_until` pair schedules and
    leases the reconciliation checks (payment/reconciliation/claims.py). The class keeps its
    old name: the table, content type and permission codenames (`view_paymentattempt`,
    `query_alipay`) come from it.
    """

    order = models.OneToOneField(
        OrderInfo, on_delete=models.CASCADE, primary_key=True, related_name="payment_attempt"
    )
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    started_at = models.DateTimeField(db_index=True)
    last_started_at = models.DateTimeField()
    links_issued = models.PositiveIntegerField(default=1)
    # The cashier of the latest link issued.
    channel = models.CharField(max_length=8, choices=PayChannel.choices, default=PayChannel.PAGE)
    next_check_at = models.DateTimeField(null=True, blank=True, db_index=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    checks = models.PositiveIntegerField(default=0)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_result = models.CharField(max_length=100, blank=True)

    class Meta:
        verbose_name = "pay link"
        permissions = [("query_alipay", "Can ask Alipay about an order now")]
        indexes = [
            # The dashboard's reconciliation figures: checks of the last 24 hours.
            models.Index(fields=["last_checked_at"], name="paymentattempt_checked"),
        ]

    def __str__(self) -> str:
        return f"pay link {self.order_id}"


class EventSource(models.TextChoices):
    """Where a payment event came from."""

    RETURN = "return", "return redirect"
    NOTIFY = "notify", "notification"
    QUERY = "query", "trade query"
    EXPIRY = "expiry", "order expiry"
    CANCEL = "cancel", "canceled by the buyer"
    OPERATOR = "operator", "operator"
    BILL = "bill", "Alipay's daily bill"


class EventState(models.TextChoices):
    """Where a payment event stands in its processing."""

    RECEIVED = "received"
    APPLIED = "applied"
    RECORDED = "recorded"  # verified, nothing to apply (e.g. WAIT_BUYER_PAY, a refund)
    REJECTED = "rejected"
    DEAD = "dead"


class PaymentEvent(models.Model):
    """Everything that arrived or was learned about a payment, stored before anything else.

    It doubles as each order's payment history.
    """

    Source = EventSource
    State = EventState

    FINAL_STATES = (State.APPLIED, State.RECORDED, State.REJECTED, State.DEAD)

    source = models.CharField(max_length=10, choices=Source.choices)
    dedupe_key = models.CharField(max_length=200, unique=True)
    out_trade_no = models.CharField(max_length=64, blank=True, db_index=True)
    trade_no = models.CharField(max_length=64, blank=True, db_index=True)
    order = models.ForeignKey(
        OrderInfo, on_delete=models.SET_NULL, null=True, blank=True, related_name="payment_events"
    )
    raw_data = models.JSONField()
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    # The request (or task) it arrived with: X-Request-ID, in the log lines of both sides. A
    # default in the database too, so that processes of the release before still store events.
    request_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    # Indexed by (state, received_at) below (payment/migrations/0016_event_index_trim.py).
    state = models.CharField(max_length=10, choices=State.choices, default=State.RECEIVED)
    reason = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    deliveries = models.PositiveIntegerField(default=1)
    last_error = models.TextField(blank=True)
    # When a worker may next claim it: the retry schedule and the claim lease in one field.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "payment event"
        ordering = ["-received_at", "-id"]
        permissions = [("reprocess_event", "Can re-process a dead or stuck event")]
        indexes = [
            models.Index(fields=["state", "received_at"], name="paymentevent_state_recv"),
            models.Index(fields=["next_attempt_at", "id"], name="paymentevent_due",
                         condition=models.Q(state="received")),
        ]

    def __str__(self) -> str:
        return f"{self.source} event {self.pk} for {self.out_trade_no}"

    @property
    def is_final(self) -> bool:
        return self.state in self.FINAL_STATES


class Payment(models.Model):
    """Money that really arrived at Alipay for an order."""

    class Status(models.TextChoices):
        APPLIED = "applied"  # paid the order
        REFUND_PENDING = "refund_pending"  # the order could not take it: to be refunded
        REFUNDED = "refunded"

    order = models.ForeignKey(OrderInfo, on_delete=models.PROTECT, related_name="payments")
    trade_id = models.CharField(max_length=64, unique=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    source = models.CharField(max_length=10, choices=PaymentEvent.Source.choices)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.APPLIED, db_index=True
    )
    event = models.ForeignKey(
        PaymentEvent, on_delete=models.SET_NULL, null=True, blank=True, related_name="payments"
    )
    # A late payment's refund: mirrors of its row in the ledger (`Refund`, source late payment).
    refund_request_no = models.CharField(max_length=64, blank=True)
    refund_tried_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    refunded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "payment"
        ordering = ["-created_at"]
        permissions = [("refund_payment", "Can refund payments")]
        indexes = [
            # The dashboard's payments per minute, and the admin list's ordering.
            models.Index(fields=["created_at"], name="payment_created"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["order"],
                condition=models.Q(status="applied"),
                name="payment_one_applied_per_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.trade_id} ({self.order_id})"


class RefundState(models.TextChoices):
    """Where a refund stands with Alipay."""

    REQUESTED = "requested"  # stored; to be sent to Alipay (again, with the same number)
    SENT = "sent"  # Alipay accepted it; to be confirmed with the refund query
    UNKNOWN = "unknown"  # sent, no usable answer (lost, time-out, busy): ask Alipay
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # Alipay refused it (sub_code); no money moved


class RefundSource(models.TextChoices):
    """Who asked for a refund."""

    OPERATOR = "operator", "operator (admin)"
    STAFF_API = "staff_api", "staff API"
    LATE_PAYMENT = "late_payment", "late payment"


class Refund(models.Model):
    """The refund ledger: one row per refund asked for, stored before Alipay is asked.

    `out_request_no` is chosen when the row is created and sent on every try, so a refund
    whose answer was lost is confirmed with Alipay's refund query (or sent again with the same
    number, which Alipay treats as the same refund), never made twice. Refunds that are not
    failed count against the payment: together they never exceed its amount.
    """

    State = RefundState
    Source = RefundSource

    OPEN_STATES = (State.REQUESTED, State.SENT, State.UNKNOWN)

    order = models.ForeignKey(OrderInfo, on_delete=models.PROTECT, related_name="refunds")
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    reason = models.CharField(max_length=256)
    out_request_no = models.CharField(max_length=64, unique=True)
    idempotency_key = models.CharField(max_length=200, blank=True)
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.REQUESTED, db_index=True
    )
    sub_code = models.CharField(max_length=64, blank=True)  # Alipay's, when it refused
    source = models.CharField(max_length=12, choices=Source.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    attempts = models.PositiveIntegerField(default=0)  # refund requests sent to Alipay
    queries = models.PositiveIntegerField(default=0)  # refund queries asked
    last_error = models.TextField(blank=True)
    confirmed_by = models.CharField(max_length=12, blank=True)  # query or notification
    # When a worker may next take it: the retry schedule and the claim lease in one field.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "refund"
        ordering = ["requested_at", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0),
                                   name="refund_amount_positive"),
            # A key is its staff member's own: another member's same key is another request.
            models.UniqueConstraint(fields=["requested_by", "idempotency_key"],
                                    condition=~models.Q(idempotency_key=""),
                                    name="refund_idempotency_key_unique_per_user"),
            # A late payment is refunded whole, once: a second row only after a failed one.
            models.UniqueConstraint(
                fields=["payment"],
                condition=models.Q(source="late_payment") & ~models.Q(state="failed"),
                name="refund_one_per_late_payment",
            ),
        ]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="refund_open_due",
                         condition=models.Q(state__in=["requested", "sent", "unknown"])),
            # The dashboard's refunds of the last 24 hours, and the admin list's ordering.
            models.Index(fields=["requested_at"], name="refund_requested"),
        ]

    def __str__(self) -> str:
        return f"refund {self.out_request_no} ({self.amount})"

    @property
    def is_open(self) -> bool:
        return self.state in self.OPEN_STATES


class RefusedRequest(models.Model):
    """Requests to the payment endpoints that were not Alipay's, counted per client and hour.

    Unreadable, or the signature did not verify: never linked to an order nor shown to a
    buyer, and never a payment event. One row per source, client and hour keeps the count
    and a bounded sample of the first request (no signature).
    """

    source = models.CharField(max_length=10, choices=PaymentEvent.Source.choices)
    remote_addr = models.CharField(max_length=45, blank=True)
    hour = models.DateTimeField()
    count = models.PositiveIntegerField(default=1)
    reason = models.CharField(max_length=200)
    out_trade_no = models.CharField(max_length=64, blank=True)
    sample = models.JSONField()
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "refused request"
        ordering = ["-last_seen"]
        constraints = [
            models.UniqueConstraint(fields=["source", "remote_addr", "hour"],
                                    name="refusedrequest_per_client_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.count} refused {self.source} from {self.remote_addr or 'unknown'}"


class BillReport(models.Model):
    """One day's reconciliation against Alipay's trade bill: totals on both sides, findings.

    The bill's lines are kept as BillEntry rows and the findings as BillFinding rows; a rerun
    of the same day replaces both and applies nothing twice.
    """

    class State(models.TextChoices):
        DONE = "done"
        NO_BILL = "no_bill", "no bill (no trades at Alipay)"
        FAILED = "failed"

    bill_date = models.DateField(unique=True)
    state = models.CharField(max_length=10, choices=State.choices)
    alipay_trades = models.PositiveIntegerField(default=0)
    alipay_trade_amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    alipay_refunds = models.PositiveIntegerField(default=0)
    alipay_refund_amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    our_trades = models.PositiveIntegerField(default=0)
    our_trade_amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    our_refunds = models.PositiveIntegerField(default=0)
    our_refund_amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    matched = models.PositiveIntegerField(default=0)
    findings = models.PositiveIntegerField(default=0, db_index=True)
    runs = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "bill reconciliation"
        ordering = ["-bill_date"]

    def __str__(self) -> str:
        return f"bill {self.bill_date}: {self.findings} findings"


class BillEntry(models.Model):
    """A detail line of Alipay's trade bill, as downloaded."""

    class Kind(models.TextChoices):
        TRADE = "trade"
        REFUND = "refund"

    report = models.ForeignKey(BillReport, on_delete=models.CASCADE, related_name="entries")
    kind = models.CharField(max_length=6, choices=Kind.choices)
    trade_no = models.CharField(max_length=64, db_index=True)
    out_trade_no = models.CharField(max_length=64)
    out_request_no = models.CharField(max_length=64, blank=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    finished_at = models.CharField(max_length=20, blank=True)

    class Meta:
        verbose_name = "bill entry"
        verbose_name_plural = "bill entries"
        indexes = [
            models.Index(fields=["out_request_no"], name="billentry_refund_request",
                         condition=models.Q(kind="refund")),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.trade_no} {self.amount}"


class BillFinding(models.Model):
    """Where our books and Alipay's bill disagree, for one trade or refund."""

    class Outcome(models.TextChoices):
        MISSING_HERE = "missing_here", "paid at Alipay, unknown or unpaid here"
        MISSING_AT_ALIPAY = "missing_at_alipay", "paid here, absent from the bill"
        AMOUNT_MISMATCH = "amount_mismatch", "amounts differ"
        REFUND_MISMATCH = "refund_mismatch", "refunds differ"

    # Not "findings": that is the report's count of them.
    report = models.ForeignKey(BillReport, on_delete=models.CASCADE,
                               related_name="finding_rows")
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    trade_no = models.CharField(max_length=64, blank=True)
    out_trade_no = models.CharField(max_length=64, blank=True)
    out_request_no = models.CharField(max_length=64, blank=True)
    alipay_amount = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    our_amount = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name = "bill finding"
        ordering = ["outcome", "trade_no"]

    def __str__(self) -> str:
        return f"{self.outcome} {self.trade_no or self.out_request_no}"


class AlipayCertificate(models.Model):
    """A certificate Alipay named in an answer (`alipay_cert_sn`) that the configured one is
    not: downloaded with `alipay.open.app.alipaycert.download` when Alipay renewed its own.

    Kept whether its chain held or not: a refused one (`refusal` says why) is never used to
    verify, and is not downloaded again. Trust is decided again from the configured root
    each time a process loads the rows, so a changed root file is honoured.
    """

    sn = models.CharField("serial number (alipay_cert_sn)", max_length=32, unique=True)
    pem = models.TextField(help_text="The certificate file as Alipay sent it (leaf first).")
    subject = models.CharField(max_length=500)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    refusal = models.CharField(max_length=500, blank=True,
                               help_text="Why it is not trusted; empty when its chain held.")
    downloaded_at = models.DateTimeField()

    class Meta:
        verbose_name = "Alipay certificate"
        ordering = ["-downloaded_at"]

    def __str__(self) -> str:
        return f"Alipay certificate {self.sn}"
