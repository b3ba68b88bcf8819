from datetime import UTC, datetime
from typing import Any

from django.core.checks import Error, Warning, register

from payment.gateway import KeyFileError, keys_check
from payment.gateway.report import certificates_report

# An operator has this long to install a renewed certificate before the check warns.
EXPIRY_WARNING_DAYS = 30


@register()
def alipay_keys_check(app_configs: Any, **kwargs: Any) -> list[Error | Warning]:
    try:
        keys_check()
    except KeyFileError as exc:
        return [Error(str(exc), id="payment.E001")]
    now = datetime.now(UTC)
    return [
        Warning(f"The {info.role} certificate {info.sn} ({info.subject}) expires in "
                f"{info.days_left(now):.0f} days, on {info.not_after:%Y-%m-%d}.",
                hint="Download the renewed certificate from Alipay's console.",
                id="payment.W002")
        for info in certificates_report(now, downloaded=False)
        if not info.problem and info.days_left(now) < EXPIRY_WARNING_DAYS
    ]
