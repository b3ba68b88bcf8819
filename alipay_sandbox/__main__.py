"""``python -m alipay_sandbox``: run the local Alipay gateway;
``python -m alipay_sandbox certs``: issue the files of certificate mode (see certs.py)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from . import certs
from .app import Sandbox
from .certmode import CertSetup, load_setup
from .config import parse_config
from .server import SandboxHTTPServer
from .signing import KeyFileError, load_private_key, load_public_key


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["certs"]:
        return certs.main(args[1:])
    config = parse_config(args)
    logging.basicConfig(
        level=getattr(logging, config.log_level, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cert_setup: CertSetup | None = None
    try:
        alipay_key = load_private_key(config.alipay_private_key)
        if config.cert_dir is not None:
            cert_setup = load_setup(config.cert_dir, alipay_key)
            app_public_key = cert_setup.app_public_key
        else:
            app_public_key = load_public_key(config.app_public_key)
    except KeyFileError as exc:  # CertFileError too
        print(f"alipay_sandbox: {exc}", file=sys.stderr)
        return 2
    sandbox = Sandbox(config, alipay_key, app_public_key, cert_setup)
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
    mode = ""
    if sandbox.cert_mode is not None:
        mode = f", certificate mode, alipay_cert_sn {sandbox.signer.current().cert_sn}"
    print(f"alipay_sandbox listening on {base_url} (control API {control}{mode})", file=sys.stderr)
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
