"""The check of a webhook URL given with a job or batch: http(s), and a public address.

Loopback, link-local, private, multicast, reserved and unspecified addresses are refused
(a webhook must not make the service call into its own network) unless
``LCM_WEBHOOK_ALLOW_PRIVATE_URLS`` is set. A host name is resolved and every address it
has must pass; the delivery must check the address it connects to again (DNS can change).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from producer.http.errors import ApiError

MAX_URL_CHARS = 2000
ALLOWED = (
    "an http:// or https:// URL of at most 2000 characters whose host is a public address "
    "(loopback, link-local and private addresses are refused unless "
    "LCM_WEBHOOK_ALLOW_PRIVATE_URLS is set)"
)

Resolver = Callable[[str, int], Iterable[str]]


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def check_webhook_url(
    url: str,
    *,
    allow_private: bool = False,
    field: str = "webhook_url",
    resolver: Resolver = resolve,
) -> str:
    """The URL if it may be called back; else ApiError(400) naming the field and value."""

    def refuse(why: str) -> ApiError:
        return ApiError(
            400,
            f"field '{field}' got {url!r}: {why}; allowed: {ALLOWED}",
            param=field,
            value=url,
            allowed=ALLOWED,
            code="invalid_webhook_url",
        )

    if len(url) > MAX_URL_CHARS:
        raise refuse(f"longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise refuse(f"not a URL ({e})") from e
    if parts.scheme not in ("http", "https"):
        raise refuse(f"scheme {parts.scheme!r} is not http or https")
    host = parts.hostname
    if not host:
        raise refuse("it names no host")
    if parts.username or parts.password:
        raise refuse("credentials in the URL are not accepted")
    if allow_private:
        return url
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = list(resolver(host, port))
        except (OSError, UnicodeError) as e:
            raise refuse(f"its host {host!r} does not resolve ({e})") from e
    if not addresses:
        raise refuse(f"its host {host!r} does not resolve")
    for address in addresses:
        if not is_public(address):
            raise refuse(f"its host {host!r} is the non-public address {address}")
    return url
