from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from payment.gateway.keys import write_keys


class Command(BaseCommand):
    help = (
        "Generate the shop's RSA key pair into keys/ (its public half goes to Alipay's "
        "console); --sandbox adds the pair the local Alipay sandbox signs with. Existing "
        "files are kept."
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

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"])
        written = write_keys(directory, sandbox=options["sandbox"])
        for path in sorted(directory.glob("*.pem")):
            state = "created" if path in written else "kept"
            self.stdout.write(f"{state}: {path}")
