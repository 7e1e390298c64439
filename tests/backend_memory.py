from __future__ import annotations

import pytest

from backends import BACKENDS, BackendConfig, BackendInfo
from pyncette.memory import memory_repository

BACKENDS["memory"] = BackendInfo(shared=False)


@pytest.fixture
def memory_backend() -> BackendConfig:
    return BackendConfig("memory", memory_repository, shared=False)
