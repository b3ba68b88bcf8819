from typing import Any

from django.core.checks import Error, register

from payment.gateway import KeyFileError, keys_check


@register()
def alipay_keys_check(app_configs: Any, **kwargs: Any) -> list[Error]:
    try:
        keys_check()
    except KeyFileError as exc:
        return [Error(str(exc), id="payment.E001")]
    return []
