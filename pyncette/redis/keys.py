"""Key layout: every key of one group shares a cluster hash tag.

A group's keys are ``pyncette:{<namespace>:<group>}:rows`` (hash of row values),
``...:due`` (names scored by claimable time) and ``...:names`` (names for listing), and
one run-history list per row, ``...:history:<row name>``, that expires on its own.
Braces and ``%`` in the group are percent-escaped so that the hash tag (the text between
the first ``{`` and the next ``}``) always covers the namespace and the whole group; a
row name comes after the tag, so whatever it contains cannot move the key's slot.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

PREFIX = "pyncette"
HISTORY = "history:"
"""What the name of every history key starts with after the group's tag: no other key
of a group (``rows``, ``due``, ``names``, the 1.x marker keys) does."""


class GroupKeys(NamedTuple):
    rows: str
    due: str
    names: str


def escape_group(group: str) -> str:
    return group.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@functools.lru_cache(maxsize=4096)
def group_base(namespace: str, group: str) -> str:
    """What every key of ``group`` starts with: ``pyncette:{<namespace>:<group>}:``."""
    return f"{PREFIX}:{{{namespace}:{escape_group(group)}}}:"


@functools.lru_cache(maxsize=4096)
def group_keys(namespace: str, group: str) -> GroupKeys:
    base = group_base(namespace, group)
    return GroupKeys(base + "rows", base + "due", base + "names")


def history_key(namespace: str, group: str, name: str) -> str:
    """The list of row ``name``'s past outcomes, newest first (in the group's slot)."""
    return group_base(namespace, group) + HISTORY + name


def wake_channel(namespace: str) -> str:
    """The pub/sub channel of ``instant_wakeups`` for ``namespace``."""
    return f"{PREFIX}:{{{namespace}}}:wake"


def namespace_pattern(namespace: str) -> str:
    """A ``SCAN MATCH`` pattern for every key of ``namespace``."""
    return f"{PREFIX}:{{{namespace}:*"
