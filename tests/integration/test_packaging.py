"""The wheel carries what an installed pyncette needs beyond its Python modules."""

from __future__ import annotations

import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

from support import ROOT


def test_wheel_ships_migrations_scripts_and_type_marker(tmp_path: Path) -> None:
    builder = WheelBuilder(str(ROOT))
    (wheel,) = list(builder.build(directory=str(tmp_path), versions=["standard"]))
    names = set(zipfile.ZipFile(wheel).namelist())

    assert "pyncette/_alembic/alembic.ini" in names
    assert "pyncette/_alembic/alembic/env.py" in names
    revisions = [n for n in names if n.startswith("pyncette/_alembic/alembic/versions/")]
    sources = sorted(p.name for p in (ROOT / "alembic" / "versions").glob("*.py"))
    assert sorted(Path(n).name for n in revisions if n.endswith(".py")) == sources
    assert "pyncette/py.typed" in names
    assert "pyncette/redis/claim.lua" in names
    assert "pyncette/dynamodb/table.json" in names
    # nothing from the repository's other top-level folders leaks into the package
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/", "docs/"))]
