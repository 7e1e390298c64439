"""The Lua scripts, loaded from the ``.lua`` files beside this module."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())  # noqa: S324


def _load(name: str) -> Script:
    package = resources.files(__package__)
    prelude = package.joinpath("row.lua").read_text(encoding="utf-8")
    body = package.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, f"{prelude}\n{body}")


CLAIM = _load("claim")
COMMIT = _load("commit")
EXTEND = _load("extend")
UNLOCK = _load("unlock")
REGISTER = _load("register")
UNREGISTER = _load("unregister")
LIST = _load("list")
