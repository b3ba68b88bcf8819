"""Which peers are the reverse proxies: FORWARDED_ALLOW_IPS, gunicorn's setting.

A connection from one of them is believed about the client (X-Forwarded-For, X-Forwarded-Proto:
uvicorn's ProxyHeadersMiddleware, in config/asgi.py) and about the request id it assigned
(X-Request-ID, infra/logs.py); a connection from anyone else is believed about neither. The
web's gunicorn worker (config/serving.py) hands gunicorn's value to the settings, so that the
server, the ASGI app and Django's side share one list.
"""
import ipaddress
from collections.abc import Iterable

ANYONE = "*"
PROXIES_DEFAULT = ("127.0.0.1", "::1")  # gunicorn's


def proxies_parse(entries: Iterable[str]) -> list[str]:
    """The list's entries, each an address, a network or `*`; ValueError names a wrong one."""
    parsed = [entry.strip() for entry in entries if entry.strip()]
    for entry in parsed:
        if entry != ANYONE:
            ipaddress.ip_network(entry, strict=False)
    return parsed


class TrustedProxies:
    """`peer in proxies`: whether a connection's address is one of the proxies."""

    def __init__(self, entries: Iterable[str]) -> None:
        parsed = proxies_parse(entries)
        self.anyone = ANYONE in parsed
        self.networks = [ipaddress.ip_network(entry, strict=False)
                         for entry in parsed if entry != ANYONE]

    def __contains__(self, peer: object) -> bool:
        if self.anyone:
            return True
        if not isinstance(peer, str) or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:  # a Unix socket's peer, or not an address at all
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's IPv4 peer
        return any(address in network for network in self.networks)
