"""The DynamoDB backend's options, validated into a typed settings object."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyncette.options import boolean, matching, url
from pyncette.repository import check_options
from pyncette.urls import mask_url

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
    """The ``dynamodb_*`` options, validated (``ValueError`` naming any bad one)."""

    table_name: str = DEFAULT_TABLE_NAME
    partition_prefix: str = DEFAULT_PARTITION_PREFIX
    region_name: str | None = None
    """``None``: whatever boto3 resolves (``AWS_DEFAULT_REGION``, ``~/.aws/config``)."""
    endpoint: str | None = None
    """A local or private endpoint URL instead of the regional AWS one."""
    skip_table_create: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> DynamoDBSettings:
        check_options("dynamodb_", options, OPTIONS)
        region = options.get("dynamodb_region_name")
        endpoint = options.get("dynamodb_endpoint")
        return cls(
            table_name=matching(
                "dynamodb_table_name",
                options.get("dynamodb_table_name", DEFAULT_TABLE_NAME),
                _TABLE_NAME,
                "a DynamoDB table name: 3 to 255 letters, digits, '_', '-' or '.'",
            ),
            partition_prefix=matching(
                "dynamodb_partition_prefix",
                options.get("dynamodb_partition_prefix", DEFAULT_PARTITION_PREFIX),
                _PREFIX,
                "1 to 255 letters, digits, '_', '-' or '.'",
            ),
            region_name=None
            if region is None
            else matching(
                "dynamodb_region_name", region, _REGION, "a region name such as 'eu-west-1'"
            ),
            endpoint=None if endpoint is None else _endpoint(endpoint),
            skip_table_create=boolean(
                "dynamodb_skip_table_create", options.get("dynamodb_skip_table_create", False)
            ),
        )


def _endpoint(value: object) -> str:
    endpoint = url("dynamodb_endpoint", value, schemes=("http", "https"), host=True)
    parts = urllib.parse.urlsplit(endpoint)
    if parts.username is not None or parts.password is not None:
        # boto3 would quote it, password and all, in its own errors and debug logs
        raise ValueError(
            f"dynamodb_endpoint must not contain a user or password, got {mask_url(endpoint)}; "
            "AWS credentials come from the environment or ~/.aws"
        )
    return endpoint
