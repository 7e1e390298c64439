"""The backend registry the ``backend`` fixture is parametrized over, and service checks."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest

from pyncette.repository import RepositoryFactory

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class BackendConfig:
    """How to build apps on one fresh, isolated store of a backend.

    Every app built from the same config sees the same store when ``shared`` is true,
    which is what the multi-instance tests need.
    """

    name: str
    repository_factory: RepositoryFactory
    options: dict[str, Any] = field(default_factory=dict)
    shared: bool = True

    def kwargs(self) -> dict[str, Any]:
        return {"repository_factory": self.repository_factory, **self.options}


@dataclass(frozen=True)
class BackendInfo:
    marks: list[pytest.MarkDecorator] = field(default_factory=list)
    shared: bool = True
    """Whether apps built from one config share storage (multi-instance tests need it)."""


BACKENDS: dict[str, BackendInfo] = {}
"""Backend name -> info. Each ``backend_*.py`` plugin registers its backends here and
defines a fixture ``<name>_backend`` yielding a fresh :class:`BackendConfig`."""


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, available: bool, detail: str = "") -> None:
    """Skip locally when a server is missing; in CI (``CI=true``) fail instead."""
    if available:
        return
    message = f"{name} server is not reachable{': ' + detail if detail else ''}"
    if IN_CI:
        pytest.fail(f"{message} (CI must run every backend)", pytrace=False)
    pytest.skip(message)
