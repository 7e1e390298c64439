"""Key layout: every key of one group shares a cluster hash tag.

A group's keys are ``pyncette:{<namespace>:<group>}:rows`` (hash of row values),
``...:due`` (names scored by claimable time) and ``...:names`` (names for listing).
Braces and ``%`` in the group are percent-escaped so that the hash tag (the text between
the first ``{`` and the next ``}``) always covers the namespace and the whole group.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

PREFIX = "pyncette"


class GroupKeys(NamedTuple):
    rows: str
    due: str
    names: str


def escape_group(group: str) -> str:
    return group.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@functools.lru_cache(maxsize=4096)
def group_keys(namespace: str, group: str) -> GroupKeys:
    base = f"{PREFIX}:{{{namespace}:{escape_group(group)}}}:"
    return GroupKeys(base + "rows", base + "due", base + "names")


def wake_channel(namespace: str) -> str:
    """The pub/sub channel of ``instant_wakeups`` for ``namespace``."""
    return f"{PREFIX}:{{{namespace}}}:wake"


def namespace_pattern(namespace: str) -> str:
    """A ``SCAN MATCH`` pattern for every key of ``namespace``."""
    return f"{PREFIX}:{{{namespace}:*"
