"""The Redis backend's options, validated into a typed settings object."""

from __future__ import annotations

import datetime
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pyncette.repository import check_options

DEFAULT_URL = "redis://localhost"
MAX_NAMESPACE_LENGTH = 100
_URL_SCHEMES = ("redis", "rediss", "unix")
# Characters that would blur the key layout (":" separates parts, braces delimit the
# cluster hash tag) or make keys awkward to match with SCAN patterns.
_FORBIDDEN = frozenset("{}:*?[]\\\"'")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = DEFAULT_URL
    namespace: str = ""
    timeout: float = 10.0
    """Socket connect and read timeout, in seconds."""
    cluster: bool | None = None
    """``True``: Redis Cluster; ``False``: one server; ``None``: ask the server."""

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RedisSettings:
        check_options(
            "redis_", options, {"redis_url", "redis_namespace", "redis_timeout", "redis_cluster"}
        )
        return cls(
            url=_url(options.get("redis_url", DEFAULT_URL)),
            namespace=validate_namespace(options.get("redis_namespace", "")),
            timeout=_timeout(options.get("redis_timeout", 10.0)),
            cluster=_cluster(options.get("redis_cluster")),
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


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for logs and errors)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _url(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError(f"redis_url must be a non-empty string, not {url!r}")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _URL_SCHEMES:
        raise ValueError(
            f"redis_url {mask_url(url)!r} has scheme {scheme!r}; expected one of "
            f"{', '.join(s + '://' for s in _URL_SCHEMES)}"
        )
    return url


def _timeout(timeout: object) -> float:
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise ValueError(f"redis_timeout must be a number of seconds, not {timeout!r}")
    if not seconds > 0:
        raise ValueError(f"redis_timeout must be positive, not {timeout!r}")
    return seconds


def _cluster(cluster: object) -> bool | None:
    if cluster is None or isinstance(cluster, bool):
        return cluster
    raise ValueError(f"redis_cluster must be True, False or None (detect), not {cluster!r}")
