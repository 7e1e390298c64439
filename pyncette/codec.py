"""Opaque continuation tokens: a JSON value, URL-safe base64 encoded.

The core's :meth:`~pyncette.PyncetteContext.list_tasks` and any backend whose paging
position is more than a name use these, so a token survives being put in a URL and a
tampered one is a clear ``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pyncette.model import ContinuationToken


def encode_token(value: Any) -> ContinuationToken:
    """``value`` (anything JSON can hold) as an opaque token."""
    payload = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return ContinuationToken(base64.urlsafe_b64encode(payload).decode("ascii"))


def decode_token(token: object) -> Any:
    """The value inside a token from :func:`encode_token`; ``ValueError`` if it is not one."""
    try:
        if not isinstance(token, str):
            raise TypeError
        return json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise ValueError(f"Invalid continuation token {token!r}") from None
