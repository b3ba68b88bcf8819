from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from payment.gateway import KeyFileError, keys_check, trust
from payment.gateway.report import certificates_report


class Command(BaseCommand):
    help = (
        "Print how the shop signs and verifies with Alipay: the mode (key or certificate), "
        "the serial numbers its requests carry, each certificate's subject and expiry, and "
        "whether Alipay's certificate chains to the root. Exits 1 when something is not usable."
    )
    requires_system_checks: list[str] = []  # it diagnoses what the checks would refuse

    def handle(self, *args: Any, **options: Any) -> None:
        write = self.stdout.write
        mode = trust.mode()
        write(f"mode: {mode}")
        problems: list[str] = []
        if mode == trust.KEY_MODE:
            try:
                keys = trust.public_keys_read(settings.ALIPAY_PUBLIC_KEY_PATH)
            except KeyFileError as exc:
                raise CommandError(str(exc)) from None
            write(f"Alipay public keys ({settings.ALIPAY_PUBLIC_KEY_PATH}): {len(keys)}")
            for key in keys:
                write(f"  {key.key_id}")
        else:
            try:
                app_sn, root_sn = trust.request_sns()
                write(f"app_cert_sn:         {app_sn}")
                write(f"alipay_root_cert_sn: {root_sn}")
            except KeyFileError as exc:
                problems.append(str(exc))
            report = certificates_report()
            for info in report:
                if info.role == "alipay" and info.source != "downloaded":
                    write(f"alipay_cert_sn:      {info.sn}")
            for info in report:
                state = f"NOT USABLE: {info.problem}" if info.problem else "ok"
                if info.role == "alipay" and not info.problem:
                    state = "ok, chain to the root holds"
                write(f"\n{info.role} certificate {info.sn or '-'} ({info.source})")
                write(f"  subject: {info.subject or '-'}")
                write(f"  expires: {info.not_after:%Y-%m-%d %H:%M} UTC "
                      f"({info.days_left():.0f} days left)")
                write(f"  state:   {state}")
                if info.problem and info.source != "downloaded":
                    problems.append(f"{info.role} certificate: {info.problem}")
        try:
            keys_check()
        except KeyFileError as exc:
            problems.append(str(exc))
        if problems:
            raise CommandError("\n".join(dict.fromkeys(problems)))
