from django.apps import AppConfig


class PaymentConfig(AppConfig):
    name = "payment"
    verbose_name = "Payments"

    def ready(self) -> None:
        from payment.gateway import checks  # noqa: F401  (registers the key file check)
