"""HMAC signatures the service hands out: webhook bodies, and the gallery's short-lived links.

Webhooks: ``X-LCM-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>``
with the owner key's webhook secret (producer/http/auth.py ``webhook_secret``). The
timestamp is signed with the body, so a receiver that checks it (``verify``'s
``tolerance_s``) refuses a captured delivery replayed later. Stdlib only: a receiver can
copy :func:`verify` as it is (docs/api.md, "Webhooks").

Gallery links: ``sig = hex HMAC-SHA256(pepper, f"gallery:{kind}:{id}:{exp}")``; the page,
its data and its images all carry ``exp`` and ``sig``, so no API key goes into a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-LCM-Signature"
#: How far a webhook's timestamp may be from the receiver's clock (either way).
DEFAULT_TOLERANCE_S = 300


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: bytes | str, timestamp: int, body: bytes) -> str:
    return hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes | str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-LCM-Signature`` value of ``body`` (the exact bytes POSTed)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(
    secret: bytes | str,
    header: str,
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True if ``header`` signs the raw ``body`` with ``secret`` at a time within
    ``tolerance_s`` of ``now``. Any ``v1`` entry may match (several while a secret rotates)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body).encode()
    # Bytes: compare_digest refuses str with non-ASCII characters (a forged header may have them).
    return any(hmac.compare_digest(expected, c.encode("utf-8", "replace")) for c in candidates)


def gallery_sig(pepper: bytes | str, kind: str, record_id: str, exp: int) -> str:
    """The signature of a gallery link to one job or batch, valid until ``exp``."""
    message = f"gallery:{kind}:{record_id}:{exp}".encode()
    return hmac.new(_key(pepper), message, hashlib.sha256).hexdigest()


def gallery_link_valid(
    pepper: bytes | str, kind: str, record_id: str, exp: int, sig: str, now: float | None = None
) -> bool:
    if exp < (time.time() if now is None else now):
        return False
    expected = gallery_sig(pepper, kind, record_id, exp).encode()
    return hmac.compare_digest(expected, sig.encode("utf-8", "replace"))
