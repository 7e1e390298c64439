"""Griffe extension for the reference pages: reST-isms of the docstrings as Markdown.

The docstrings are written for Sphinx-like tools: cross-reference roles
(``:class:`~pyncette.Pyncette```, ``:meth:`run```) and ``text::`` before a literal block.
This turns a role into a link to the object, resolved the way Python resolves the name
in the docstring's scope, and ``::`` into ``:``. ``:param x:`` fields are left to
mkdocstrings' ``sphinx`` docstring style, and ````code```` is Markdown as it is.

A role naming nothing (a typo, a renamed object) is logged as a warning, which fails
``mkdocs build --strict``. A role naming an object of pyncette that no reference page
renders (an internal module) is shown as code without a link; one naming the standard
library or a dependency is shown as code.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import re
from typing import Any

import griffe

# under "mkdocs", so that a warning counts for ``mkdocs build --strict``
logger = logging.getLogger("mkdocs.plugins.pyncette.griffe_rst")

ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|mod|attr|data|exc|obj|const):`(?P<body>[^`]+)`"
)
# "Some text::" before a literal block is "Some text:" (a lone "::" line disappears)
LITERAL_MARKER = re.compile(r"(?P<lone>^[ \t]*::$)|(?<=\S)::$", re.MULTILINE)
PACKAGE = "pyncette"


class RstRoles(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name == PACKAGE:
            _walk(pkg, set())


def _walk(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = convert(obj.docstring.value, obj)
    for member in obj.members.values():
        if not member.is_alias:
            assert isinstance(member, griffe.Object)
            _walk(member, seen)


def convert(text: str, scope: griffe.Object) -> str:
    """``text`` with its roles as links and its ``::`` markers as colons."""

    def replace(match: re.Match[str]) -> str:
        return _reference(match["body"].strip(), scope)

    def colon(match: re.Match[str]) -> str:
        return "" if match["lone"] else ":"

    return LITERAL_MARKER.sub(colon, ROLE.sub(replace, text))


def _reference(body: str, scope: griffe.Object) -> str:
    short = body.startswith("~")
    name = body.lstrip("~").removesuffix("()")
    title = name.rsplit(".", 1)[-1] if short else name
    code = f"<code>{html.escape(title)}</code>"
    path = _absolute(name, scope)
    if path is None and _importable(name):
        return code  # the standard library's or a dependency's, not imported here
    if path is not None and path.partition(".")[0] != PACKAGE:
        return code  # imported from outside pyncette
    target = _find(path, scope) if path is not None else None
    if target is None:
        docstring = scope.docstring
        logger.warning(
            "%s:%s: the docstring of %s names %r, which does not exist",
            scope.relative_filepath,
            docstring.lineno if docstring is not None else 0,
            scope.path,
            name,
        )
        return code
    # an optional reference links where the target is rendered, and is plain code where
    # it is not (an internal module the reference does not show)
    return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'


def _absolute(name: str, scope: griffe.Object) -> str | None:
    """The dotted path ``name`` stands for in ``scope``, as Python would resolve it."""
    if name.startswith("."):  # relative to the docstring's package, as in an import
        dots = len(name) - len(name.lstrip("."))
        package: griffe.Object | None = scope.module
        if not scope.module.is_package:
            package = scope.module.parent
        for _ in range(dots - 1):
            package = package.parent if package is not None else None
        if package is None:
            return None
        return f"{package.path}.{name.lstrip('.')}"
    first, _, rest = name.partition(".")
    if first == PACKAGE:
        return name
    try:
        resolved = scope.resolve(first)  # the object's scope, then its parents'
    except griffe.NameResolutionError:
        return None
    return f"{resolved}.{rest}" if rest else resolved


def _find(path: str, scope: griffe.Object) -> str | None:
    """The canonical path of pyncette's object at ``path``, if there is one."""
    try:
        found = scope.modules_collection[path]
    except KeyError:
        return None
    if found.is_alias:
        try:
            return str(found.final_target.path)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return str(found.path)


def _importable(name: str) -> bool:
    """Whether ``name`` starts with a module outside pyncette (the standard library, a
    dependency)."""
    first = name.partition(".")[0]
    if first == PACKAGE:
        return False
    try:
        return importlib.util.find_spec(first) is not None
    except (ImportError, ValueError):
        return False
