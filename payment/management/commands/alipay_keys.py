import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from payment.gateway.keys import write_keys


class Command(BaseCommand):
    help = (
        "Generate the shop's RSA key pair into keys/ (its public half goes to Alipay's "
        "console); --sandbox adds the pair the local Alipay sandbox signs with, and --cert "
        "the certificates of certificate mode as the sandbox issues them. Existing files are "
        "kept."
    )
    requires_system_checks: list[str] = []  # it makes the keys the checks look for

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dir", default=str(Path(settings.BASE_DIR) / "keys"), help="target folder"
        )
        parser.add_argument(
            "--sandbox", action="store_true",
            help="also write the local sandbox's pair (alipay_*.pem), for development",
        )
        parser.add_argument(
            "--cert", action="store_true",
            help="with --sandbox: certificate mode's files as the sandbox issues them "
                 "(appCertPublicKey.crt, alipayCertPublicKey_RSA2.crt, alipayRootCert.crt, "
                 "and the sandbox's CA in sandbox_ca/)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"])
        if options["cert"] and not options["sandbox"]:
            raise CommandError("A real app's certificates come from Alipay's console; --cert "
                               "writes the local sandbox's (with --sandbox).")
        written = write_keys(directory, sandbox=options["sandbox"])
        for path in sorted(directory.glob("*.pem")):
            state = "created" if path in written else "kept"
            self.stdout.write(f"{state}: {path}")
        if options["cert"]:
            # The sandbox is Alipay here: it issues the certificates, as Alipay's console does
            # (its own process and package; the service never imports it).
            done = subprocess.run(
                [sys.executable, "-m", "alipay_sandbox", "certs", "--dir", str(directory),
                 "--app-id", settings.ALIPAY_APPID],
                capture_output=True, text=True, check=False)
            self.stdout.write(done.stdout.rstrip())
            if done.returncode:
                raise CommandError(f"the sandbox's certificates were not written: "
                                   f"{done.stderr.strip()}")
