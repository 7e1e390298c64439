"""Generate docs/reference.md from the docstrings: ``python docs/reference.py``."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = [
    "pyncette.pyncette",
    "pyncette.app",
    "pyncette.context",
    "pyncette.events",
    "pyncette.task",
    "pyncette.model",
    "pyncette.executor",
    "pyncette.utils",
    "pyncette.errors",
    "pyncette.repository",
    "pyncette.clock",
    "pyncette.memory",
    "pyncette.sqlite",
    "pyncette.postgres",
    "pyncette.mysql",
    "pyncette.redis",
    "pyncette.dynamodb",
    "pyncette.healthcheck",
    "pyncette.prometheus",
    "pyncette.legacy",
]
OUTPUT = Path(__file__).with_name("reference.md")


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    # function defaults print with their address; keep the output reproducible
    return re.sub(r"<function (\w+) at 0x[0-9a-f]+>", r"\1", text)


def _public(module: object) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None)
    members = []
    for name, value in vars(module).items():
        if name.startswith("_") or (names is not None and name not in names):
            continue
        if getattr(value, "__module__", None) != module.__name__:  # type: ignore[attr-defined]
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            members.append((name, value))
    return members


def render() -> str:
    out = [
        "# Reference",
        "",
        "Generated from the docstrings by `python docs/reference.py`; do not edit by hand.",
        "",
    ]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        out += [f"## `{module_name}`", ""]
        if _doc(module):
            out += [_doc(module), ""]
        for name, value in _public(module):
            if inspect.isclass(value):
                out += [f"### class `{name}`", ""]
                if _doc(value):
                    out += [_doc(value), ""]
                for attr, member in vars(value).items():
                    if attr.startswith("_") or not (
                        inspect.isfunction(member) or isinstance(member, property)
                    ):
                        continue
                    target = member.fget if isinstance(member, property) else member
                    shown = attr if isinstance(member, property) else attr + _signature(member)
                    out += [
                        f"- `{shown}`"
                        + (f": {_doc(target).splitlines()[0]}" if _doc(target) else "")
                    ]
                out.append("")
            else:
                out += [f"### `{name}{_signature(value)}`", ""]
                if _doc(value):
                    out += [_doc(value), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUTPUT.read_text() == render() else 1)
    OUTPUT.write_text(render())
