"""The DynamoDB backend's options, validated into a typed settings object."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pyncette.repository import check_options

DEFAULT_TABLE_NAME = "pyncette"
DEFAULT_PARTITION_PREFIX = "pyncette"

OPTIONS = frozenset(
    {
        "dynamodb_region_name",
        "dynamodb_table_name",
        "dynamodb_skip_table_create",
        "dynamodb_endpoint",
        "dynamodb_partition_prefix",
    }
)

# DynamoDB table names: 3 to 255 of letters, digits, underscore, hyphen and dot.
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
# A partition prefix follows the same alphabet (no ":", which separates it from the group).
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_REGION = re.compile(r"[a-z0-9-]{1,64}")


@dataclass(frozen=True, slots=True)
class DynamoDBSettings:
    table_name: str = DEFAULT_TABLE_NAME
    partition_prefix: str = DEFAULT_PARTITION_PREFIX
    region_name: str | None = None
    """``None``: whatever boto3 resolves (``AWS_DEFAULT_REGION``, ``~/.aws/config``)."""
    endpoint: str | None = None
    """A local or private endpoint URL instead of the regional AWS one."""
    skip_table_create: bool = False

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> DynamoDBSettings:
        check_options("dynamodb_", options, set(OPTIONS))
        return cls(
            table_name=_table_name(options.get("dynamodb_table_name", DEFAULT_TABLE_NAME)),
            partition_prefix=_prefix(
                options.get("dynamodb_partition_prefix", DEFAULT_PARTITION_PREFIX)
            ),
            region_name=_region(options.get("dynamodb_region_name")),
            endpoint=_endpoint(options.get("dynamodb_endpoint")),
            skip_table_create=_flag(options.get("dynamodb_skip_table_create", False)),
        )


def _table_name(name: object) -> str:
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise ValueError(
            f"dynamodb_table_name {name!r} is not a valid DynamoDB table name: use 3 to 255 "
            "letters, digits, '_', '-' or '.'"
        )
    return name


def _prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"dynamodb_partition_prefix {prefix!r} is not valid: use 1 to 255 letters, "
            "digits, '_', '-' or '.'"
        )
    return prefix


def _region(region: object) -> str | None:
    if region is None:
        return None
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise ValueError(
            f"dynamodb_region_name {region!r} is not a region name such as 'eu-west-1'"
        )
    return region


def _endpoint(endpoint: object) -> str | None:
    if endpoint is None:
        return None
    if isinstance(endpoint, str):
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme in ("http", "https") and parts.hostname:
            return endpoint
    raise ValueError(
        f"dynamodb_endpoint {endpoint!r} must be an http:// or https:// URL, "
        "such as 'http://localhost:8000'"
    )


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"dynamodb_skip_table_create must be True or False, not {value!r}")
    return value
