"""``python -m alipay_sandbox``: run the local Alipay gateway."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .app import Sandbox
from .config import parse_config
from .server import SandboxHTTPServer
from .signing import KeyFileError, load_private_key, load_public_key


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=getattr(logging, config.log_level, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        alipay_key = load_private_key(config.alipay_private_key)
        app_public_key = load_public_key(config.app_public_key)
    except KeyFileError as exc:
        print(f"alipay_sandbox: {exc}", file=sys.stderr)
        return 2
    sandbox = Sandbox(config, alipay_key, app_public_key)
    try:
        server = SandboxHTTPServer((config.host, config.port), sandbox)
    except OSError as exc:
        print(
            f"alipay_sandbox: cannot listen on {config.host}:{config.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    bound_port = server.server_address[1]
    base_url = config.base_url(bound_port)
    sandbox.set_base_url(base_url)
    sandbox.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    control = "on" if config.control else "off"
    print(f"alipay_sandbox listening on {base_url} (control API {control})", file=sys.stderr)
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
