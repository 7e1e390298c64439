"""Shared fixtures. Every behaviour test takes ``backend`` and so runs on every backend.

Each backend lives in its own plugin module (``backend_*.py``) that defines a fixture
named ``<backend>_backend`` yielding a :class:`backends.BackendConfig`.
"""

from __future__ import annotations

import pytest

from backends import BACKENDS, BackendConfig
from harness import FakeClock

pytest_plugins = ["backend_memory", "backend_sql", "backend_redis", "backend_dynamodb"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        shared_only = metafunc.definition.get_closest_marker("shared_storage") is not None
        params = [
            pytest.param(name, marks=info.marks, id=name)
            for name, info in BACKENDS.items()
            if info.shared or not shared_only
        ]
        metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> BackendConfig:
    config: BackendConfig = request.getfixturevalue(f"{request.param}_backend")
    return config


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
