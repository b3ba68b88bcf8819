from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from alipay_sandbox.keys import write_dev_keys


class Command(BaseCommand):
    help = (
        "Generate the development key pairs into keys/: the app's pair and the pair the local "
        "Alipay sandbox signs with. Existing files are kept."
    )
    requires_system_checks: list[str] = []  # it makes the keys the checks look for

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dir", default=str(Path(settings.BASE_DIR) / "keys"), help="target folder"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"])
        directory.mkdir(parents=True, exist_ok=True)
        written = write_dev_keys(directory)
        for path in sorted(directory.glob("*.pem")):
            state = "created" if path in written else "kept"
            self.stdout.write(f"{state}: {path}")
