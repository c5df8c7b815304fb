"""Which webhook URLs the deliverer may reach: http(s) only, public addresses unless allowed.

Webhook URLs come from whoever submits a job or registers an endpoint, and the deliverer
POSTs to them from inside the operator's network: that is server-side request forgery
waiting to happen. So a URL must be absolute http(s) (``file:``, ``gopher:`` and ``ftp:``
reach files and plain-text protocols), checked when it is registered and again before
every delivery; and every address its host resolves to must be public, checked when the
deliverer connects (loopback, private, link-local, unspecified, multicast and reserved
addresses reach the deliverer's own machine and network, such as a cloud metadata service
on 169.254.169.254 or an admin port on 127.0.0.1). An operator whose receivers live on the
private network says so: ``MORAG_WEBHOOK_ALLOW_PRIVATE=1`` or ``allow_private=True``.
"""

from __future__ import annotations

import ipaddress
import socket
from ipaddress import IPv4Address, IPv6Address

import httpx

from morag_jobs.errors import WebhookURLRefused

__all__ = ["SCHEMES", "allowed_addresses", "check_url", "refusal"]

SCHEMES = ("http", "https")
ALLOW_PRIVATE_HINT = "set MORAG_WEBHOOK_ALLOW_PRIVATE=1 to deliver to private addresses"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host, else :class:`WebhookURLRefused`."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise WebhookURLRefused(url, f"it is not a URL ({error})") from None
    if parsed.scheme not in SCHEMES:
        shown = repr(parsed.scheme) if parsed.scheme else "none"
        raise WebhookURLRefused(url, f"the scheme must be http or https, not {shown}")
    if not parsed.host:
        raise WebhookURLRefused(url, "it has no host; write it as http(s)://host/path")
    return url


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address inside a mapped (::ffff:a.b.c.d), 6to4 or NAT64 IPv6 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    return IPv4Address(int(address) & 0xFFFF_FFFF) if address in _NAT64 else None


def refusal(address: IPv4Address | IPv6Address) -> str | None:
    """What kind of non-public address ``address`` is (``"loopback"`` ...), or None if public."""
    if isinstance(address, IPv6Address):
        inner = _embedded_ipv4(address)  # Python 3.11 calls ::ffff:127.0.0.1 neither loopback
        if inner is not None:  # nor private, yet connecting to it reaches 127.0.0.1
            return refusal(inner)
    kinds = (
        ("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
        ("link-local", address.is_link_local), ("multicast", address.is_multicast),
        ("private", address.is_private), ("reserved", address.is_reserved),
        ("non-public", not address.is_global),  # e.g. 100.64.0.0/10, carrier-grade NAT
    )  # fmt: skip
    return next((kind for kind, matches in kinds if matches), None)


def allowed_addresses(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses ``host`` resolves to; :class:`WebhookURLRefused` if one is not public.

    One non-public answer refuses the host, whatever else it resolves to: a name that
    answers both a public and a loopback address is how DNS rebinding gets in. OS errors
    (the name does not resolve) propagate for the caller to treat as retryable.
    """
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(answer[4][0]) for answer in answers))
    if not allow_private:
        for address in addresses:
            kind = refusal(ipaddress.ip_address(address))
            if kind is not None:
                shown = host if host == address else f"{host} ({address})"
                raise WebhookURLRefused(host, f"{shown} is a {kind} address; {ALLOW_PRIVATE_HINT}")
    return addresses
