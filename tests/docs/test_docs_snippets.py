"""Every Python snippet of the backends page works as written, against the real services.

The page is ``docs/backends.md``: the user's ``backends.rst`` made Markdown, its snippets
kept as the user wrote them (``from pyncette.postgres import mysql_repository``
included) but for the one repair, the comma missing in the PostgreSQL one. Ruff's
formatter is kept off them (``<!-- fmt: off -->``) for that reason.

The how-to on pre-provisioning the schema is run here too: its shell command against
PostgreSQL, then its app.
"""

from __future__ import annotations

import ast
import datetime
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backend_dynamodb import isolate_aws_env
from backends import port_open, require_service
from pyncette import Context, Pyncette
from support import ROOT

pytestmark = pytest.mark.anyio
PAGE = ROOT / "docs" / "backends.md"
SECTIONS = ["SQLite", "Redis", "PostgreSQL", "MySQL", "Amazon DynamoDB"]
FENCE = re.compile(r"^```(?:python|py)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def sections(page: Path) -> dict[str, str]:
    """Section title (a ``##`` heading) -> the Python code of its blocks, in order."""
    found: dict[str, str] = {}
    for part in re.split(r"^## ", page.read_text(), flags=re.MULTILINE)[1:]:
        title, _, body = part.partition("\n")
        code = "".join(block for block in FENCE.findall(body))
        if code:
            found[title.strip()] = code
    return found


async def probe(app: Pyncette) -> None:
    """Prove the configured backend works: create, schedule, read, unschedule."""

    async def noop(context: Context) -> None: ...

    template = app.dynamic_task(name=f"docs_probe_{id(app)}")(noop)
    async with app.create() as ctx:
        await ctx.schedule_task(template, "probe", interval=datetime.timedelta(hours=1))
        state = await ctx.get_task(template, "probe")
        assert state is not None and state.task.name == "probe"
        await ctx.unschedule_task(template, "probe")


async def _prepare_postgres() -> None:
    require_service("postgres", port_open("127.0.0.1", 5432))
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'pyncette'"):
            await conn.execute("CREATE DATABASE pyncette")
    finally:
        await conn.close()


async def _prepare_mysql() -> None:
    require_service("mysql", port_open("127.0.0.1", 3306))
    import asyncmy

    conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("CREATE DATABASE IF NOT EXISTS pyncette")
            for host in ("localhost", "127.0.0.1", "%"):
                await cursor.execute(
                    f"CREATE USER IF NOT EXISTS 'pyncette'@'{host}' IDENTIFIED BY 'password'"
                )
                await cursor.execute(f"GRANT ALL ON pyncette.* TO 'pyncette'@'{host}'")
    finally:
        conn.close()


def test_every_section_is_python_as_the_user_wrote_it() -> None:
    found = sections(PAGE)
    assert set(found) == set(SECTIONS)
    for code in found.values():
        ast.parse(code)
    # the user's import, kept: pyncette.postgres re-exports the MySQL factory
    assert "from pyncette.postgres import mysql_repository\n" in found["MySQL"]
    assert "postgres_url='postgres://postgres@localhost/pyncette',\n" in found["PostgreSQL"]


@pytest.mark.parametrize("section", SECTIONS)
async def test_snippet_runs_as_written(
    section: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    code = sections(PAGE)[section]
    monkeypatch.chdir(tmp_path)  # the SQLite snippet writes pyncette.db here
    if section == "Redis":
        require_service("redis", port_open("127.0.0.1", 6379))
    elif section == "PostgreSQL":
        await _prepare_postgres()
    elif section == "MySQL":
        await _prepare_mysql()
    elif section == "Amazon DynamoDB":
        endpoint: str = request.getfixturevalue("dynamodb_server")
        isolate_aws_env(monkeypatch)  # ambient credentials, as the page says
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
    namespace: dict[str, Any] = {"__name__": "docs_snippet"}
    exec(compile(code, f"{PAGE.name}:{section}", "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, Pyncette)
    await probe(app)
    if section == "SQLite":
        assert (tmp_path / "pyncette.db").exists()


PROVISIONING = ROOT / "docs" / "howto" / "provision-schema.md"
SHELL_FENCE = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)


async def test_the_provisioning_howto_works_as_written(tmp_path: Path) -> None:
    """Its command creates the table in PostgreSQL, and its app then starts without DDL
    (and, before the command, fails naming the table)."""
    await _prepare_postgres()
    import asyncpg

    text = PROVISIONING.read_text()
    (command,) = SHELL_FENCE.findall(text)
    (code,) = FENCE.findall(text)
    table = "scheduler_tasks"
    assert f"table={table} " in command and f'"{table}"' in code
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1/pyncette")
    try:
        await conn.execute(
            f"DROP TABLE IF EXISTS {table}, {table}_alembic_version, {table}_history"
        )
    finally:
        await conn.close()
    namespace: dict[str, Any] = {"__name__": "docs_snippet"}
    exec(compile(code, PROVISIONING.name, "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, Pyncette)

    with pytest.raises(ValueError, match=table):
        async with app.create():
            pass

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    await probe(app)
