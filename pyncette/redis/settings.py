"""The Redis backend's options, validated into a typed settings object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyncette.options import optional_boolean, positive_seconds, url
from pyncette.repository import check_options
from pyncette.urls import mask_url

DEFAULT_URL = "redis://localhost"
DEFAULT_TIMEOUT = 10.0
OPTIONS = frozenset({"redis_url", "redis_namespace", "redis_timeout", "redis_cluster"})
MAX_NAMESPACE_LENGTH = 100
URL_SCHEMES = ("redis", "rediss", "unix")
# Characters that would blur the key layout (":" separates parts, braces delimit the
# cluster hash tag) or make keys awkward to match with SCAN patterns.
_FORBIDDEN = frozenset("{}:*?[]\\\"'")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """The ``redis_*`` options, validated (``ValueError`` naming any bad one)."""

    url: str = DEFAULT_URL
    namespace: str = ""
    timeout: float = DEFAULT_TIMEOUT
    """Socket connect and read timeout, in seconds."""
    cluster: bool | None = None
    """``True``: Redis Cluster; ``False``: one server; ``None``: ask the server."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedisSettings:
        check_options("redis_", options, OPTIONS)
        return cls(
            url=url(
                "redis_url", options.get("redis_url", DEFAULT_URL), schemes=URL_SCHEMES, host=False
            ),
            namespace=validate_namespace(options.get("redis_namespace", "")),
            timeout=positive_seconds(
                "redis_timeout", options.get("redis_timeout", DEFAULT_TIMEOUT)
            ),
            cluster=optional_boolean("redis_cluster", options.get("redis_cluster")),
        )

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)


def validate_namespace(namespace: object) -> str:
    """Return ``namespace`` if it can prefix keys safely, else raise ``ValueError``."""
    if namespace is None:
        return ""
    if not isinstance(namespace, str):
        raise ValueError(f"redis_namespace must be a string, not {type(namespace).__name__}")
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise ValueError(
            f"redis_namespace {namespace[:20]!r}... is longer than "
            f"{MAX_NAMESPACE_LENGTH} characters"
        )
    for char in namespace:
        if char in _FORBIDDEN or char.isspace() or not char.isprintable():
            raise ValueError(
                f"redis_namespace {namespace!r} contains {char!r}; a namespace may not contain "
                "whitespace, control characters or any of { } : * ? [ ] \\ \" '"
            )
    return namespace
