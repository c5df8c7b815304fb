"""Webhook secrets and the Standard Webhooks signature headers each attempt carries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

__all__ = ["SECRET_PREFIX", "generate_secret", "parse_secret", "sign", "signature_headers"]

SECRET_PREFIX = "whsec_"


def parse_secret(secret: str | bytes) -> bytes:
    """The HMAC key: bytes as given, or the base64 after ``whsec_`` (the prefix is optional)."""
    if isinstance(secret, bytes):
        key = secret
    else:
        try:
            key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except ValueError:
            raise ValueError(
                "a webhook secret is 'whsec_' followed by base64; "
                "make one with `morag-jobs webhooks secret`"
            ) from None
    if len(key) < 16:
        raise ValueError(f"a webhook secret needs at least 16 bytes of key, not {len(key)}")
    return key


def generate_secret() -> str:
    """A new random secret in the ``whsec_<base64>`` form (32 bytes of key)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(key: bytes, message_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 of HMAC-SHA256(key, f"{message_id}.{timestamp}.{body}")>``."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    key: bytes, message_id: str, body: str, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (``timestamp`` defaults to now)."""
    when = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(when),
        "webhook-signature": sign(key, message_id, when, body),
    }
