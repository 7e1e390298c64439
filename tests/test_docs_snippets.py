"""Every Python snippet of the backends page works as written, against the real services.

The page is ``docs/backends.rst`` (the user's page with its one syntax slip fixed); the
user's original in ``../shared/backends.rst`` is checked too when it is present, with only
that documented slip (a missing comma) repaired before running it.
"""

from __future__ import annotations

import ast
import datetime
import re
from pathlib import Path
from typing import Any

import pytest

from backend_dynamodb import isolate_aws_env
from backends import port_open, require_service
from pyncette import Context, Pyncette

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "docs" / "backends.rst", ROOT.parent / "shared" / "backends.rst"]
MISSING_COMMA = (
    "postgres_url='postgres://postgres@localhost/pyncette'\n",
    "postgres_url='postgres://postgres@localhost/pyncette',\n",
)


def sections(page: Path) -> dict[str, str]:
    """Section title -> the Python code of its blocks, in order."""
    text = page.read_text()
    found: dict[str, str] = {}
    title = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if index + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[index + 1]):
            title = line.strip()
        starts_block = line.strip() in (".. code-block:: py", ".. code-block:: python")
        if starts_block or (line.rstrip().endswith("::") and not line.startswith("..")):
            block: list[str] = []
            index += 1
            while index < len(lines) and (not lines[index].strip() or lines[index].startswith(" ")):
                block.append(lines[index][4:])
                index += 1
            found[title] = found.get(title, "") + "\n".join(block).strip("\n") + "\n"
            continue
        index += 1
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


def pages() -> list[Path]:
    return [page for page in PAGES if page.exists()]


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.parent.name)
def test_only_the_known_slip_keeps_the_page_from_parsing(page: Path) -> None:
    for title, code in sections(page).items():
        repaired = code.replace(*MISSING_COMMA)
        ast.parse(repaired)  # every block is valid Python once the slip is repaired
        if repaired != code:
            assert title == "PostgreSQL"
    assert set(sections(page)) >= {"SQLite", "Redis", "PostgreSQL", "MySQL", "Amazon DynamoDB"}


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.parent.name)
@pytest.mark.parametrize("section", ["SQLite", "Redis", "PostgreSQL", "MySQL", "Amazon DynamoDB"])
async def test_snippet_runs_as_written(
    page: Path,
    section: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    code = sections(page)[section].replace(*MISSING_COMMA)
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
    exec(compile(code, f"{page.name}:{section}", "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, Pyncette)
    await probe(app)
    if section == "SQLite":
        assert (tmp_path / "pyncette.db").exists()
