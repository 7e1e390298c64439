"""Finding the app a command works on: ``module:attribute`` or ``path/to/file.py:attribute``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from pyncette.app import Pyncette

DEFAULT_ATTRIBUTE = "app"
APP_HELP = (
    "APP is `module:attribute` (an importable module, e.g. `myproject.tasks:app`) or "
    "`path/to/file.py:attribute`; the attribute defaults to `app`."
)


def split_spec(spec: str) -> tuple[str, str]:
    """``spec`` as (module or file, attribute). A Windows drive letter (``C:\\x.py``) is
    not taken for the separator."""
    source, sep, attribute = spec.rpartition(":")
    if not sep or not source or any(c in attribute for c in "/\\"):
        return spec, DEFAULT_ATTRIBUTE
    return source, attribute or DEFAULT_ATTRIBUTE


def _is_path(source: str) -> bool:
    return source.endswith(".py") or "/" in source or os.sep in source


def _bad(spec: str, why: str) -> click.BadParameter:
    return click.BadParameter(f"{spec!r}: {why}", param_hint="APP")


def _import_file(spec: str, source: str) -> ModuleType:
    path = Path(source)
    if not path.is_file():
        raise _bad(spec, f"no such file {source!r}")
    path = path.resolve()
    name = path.stem if path.stem.isidentifier() else "_pyncette_app"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise _bad(spec, f"{source!r} cannot be imported as Python")
    # The file's folder goes first on the path, as `python file.py` would put it, so
    # the app's sibling modules import.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_module(spec: str, name: str) -> ModuleType:
    # The console script does not put the working directory on the path (``python -m``
    # does); apps are usually importable from there.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        # A missing module *named in APP* is a usage error; one the app itself imports
        # is the app's failure, reported as such.
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise _bad(spec, f"no module named {error.name!r}") from None
        raise


def load_app(spec: str) -> Pyncette:
    """Import the app ``spec`` names. Usage errors (no such module, file or attribute,
    not a :class:`Pyncette`) are :class:`click.BadParameter`; an exception raised by the
    app's own module propagates."""
    source, attribute = split_spec(spec)
    if not source:
        raise _bad(spec, "expected module:attribute or path/to/file.py:attribute")
    module = _import_file(spec, source) if _is_path(source) else _import_module(spec, source)
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise _bad(spec, f"{module.__name__} has no attribute {attribute!r}") from None
    if not isinstance(app, Pyncette):
        raise _bad(spec, f"{attribute!r} is a {type(app).__name__}, not a Pyncette app")
    return app


def _factory_chain(app: Pyncette) -> list[Any]:
    """The app's backend factory and what it wraps (``__wrapped__``, as set by
    ``functools.wraps`` and ``contextlib.asynccontextmanager``), outermost first."""
    chain: list[Any] = [app.repository_factory]
    while hasattr(chain[-1], "__wrapped__") and len(chain) < 20:
        chain.append(chain[-1].__wrapped__)
    return chain


def sql_backend_of(app: Pyncette) -> str | None:
    """``"sqlite"``, ``"postgres"`` or ``"mysql"`` when the app uses that built-in SQL
    backend (the default in-memory/SQLite one counts as ``"sqlite"``); else ``None``."""
    from pyncette import mysql, postgres, sqlite
    from pyncette.app import default_repository_factory

    known = {
        id(sqlite.sqlite_repository): "sqlite",
        id(default_repository_factory): "sqlite",
        id(postgres.postgres_repository): "postgres",
        id(mysql.mysql_repository): "mysql",
    }
    for factory in _factory_chain(app):
        if id(factory) in known:
            return known[id(factory)]
    return None


def describe_factory(app: Pyncette) -> str:
    factory = app.repository_factory
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"


def runs_in_memory(app: Pyncette) -> bool:
    """Whether the app's tasks live in this process only (nothing to share or migrate)."""
    from pyncette.memory import memory_repository
    from pyncette.sqlite import MEMORY

    if any(factory is memory_repository for factory in _factory_chain(app)):
        return True
    database = app.backend_options.get("sqlite_database")
    return sql_backend_of(app) == "sqlite" and database in (None, "", MEMORY)
