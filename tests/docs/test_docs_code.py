"""Every Python block of the README and of every page under ``docs/`` is run or
type-checked.

The blocks of a page run in order in one namespace, like a doctest session, in a
process of their own with a temporary working directory; ``__name__`` is not
``"__main__"`` (so ``if __name__ == "__main__": app.main()`` is skipped), and a block may
``await`` at top level. A block that cannot run here (it needs a server, a project of
the reader's, or it runs forever) is marked on the line before its fence, invisibly in
the rendered page::

    <!-- docs-test: check -->

and is compiled and type-checked with mypy instead, together with the page's other
blocks (the whole page is type-checked when any block is). A marker may carry setup
code on the lines after it, run (or checked) before the block, which stands in for what
the prose takes for granted::

    <!-- docs-test: check
    from typing import Any
    metrics: Any
    -->

``docs/backends.md`` is left to ``test_docs_snippets.py``, which runs its blocks as the
user wrote them against the real services.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support import ROOT

COVERED_ELSEWHERE = {"docs/backends.md"}
MODES = ("run", "check")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?:python|py)[ \t]*$")
MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<mode>\w+)(?P<setup>.*?)-->", re.DOTALL)
RUN_SECONDS = 60


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the first line of code, 1-based
    code: str
    mode: str
    setup: str


def pages() -> list[str]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    names = [str(path.relative_to(ROOT)) for path in found]
    return [name for name in names if name not in COVERED_ELSEWHERE]


def blocks(page: str) -> list[Block]:
    """The page's ```python blocks, with the marker before each (``run`` if none)."""
    lines = (ROOT / page).read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        indent = fence["indent"]
        start = index + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = textwrap.dedent("\n".join(line.removeprefix(indent) for line in lines[start:end]))
        mode, setup = _marker(lines, index)
        found.append(Block(page, start + 1, code + "\n", mode, setup))
        index = end + 1
    return found


def _marker(lines: list[str], fence: int) -> tuple[str, str]:
    """The mode and setup of the ``docs-test`` comment among the HTML comments right
    above the fence (others, such as ``<!-- fmt: off -->``, may sit between)."""
    comments: list[str] = []
    index = fence - 1
    while index >= 0:
        if not lines[index].strip():
            index -= 1
            continue
        if not lines[index].rstrip().endswith("-->"):
            break
        start = index
        while start > 0 and "<!--" not in lines[start]:
            start -= 1
        comments.insert(0, "\n".join(lines[start : index + 1]))
        index = start - 1
    markers = [m for comment in comments for m in MARKER.finditer(comment)]
    if not markers:
        return "run", ""
    mode = markers[-1]["mode"]
    if mode not in MODES:
        raise ValueError(f"docs-test mode {mode!r} is not one of {MODES}")
    return mode, textwrap.dedent(markers[-1]["setup"]).strip("\n") + "\n"


ALL_BLOCKS = [block for page in pages() for block in blocks(page)]
PAGES_WITH_CODE = sorted({block.page for block in ALL_BLOCKS})
RUNNABLE_PAGES = sorted({block.page for block in ALL_BLOCKS if block.mode == "run"})
CHECKED_PAGES = sorted({block.page for block in ALL_BLOCKS if block.mode == "check"})


def test_the_docs_have_code_and_every_block_is_valid_python() -> None:
    assert "README.md" in PAGES_WITH_CODE
    assert {"docs/tutorial.md", "docs/howto/testing.md"} <= set(PAGES_WITH_CODE)
    for block in ALL_BLOCKS:
        where = f"{block.page}:{block.line}"
        for code in (block.setup, block.code):
            tree = ast.parse(code, where)
            compile(tree, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if block.mode == "check":  # mypy takes a missing module for the reader's own
                _import_pyncette_names(tree, where)


def _import_pyncette_names(tree: ast.AST, where: str) -> None:
    for node in ast.walk(tree):
        targets: list[tuple[str, str | None]]
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in targets:
            if module.split(".")[0] != "pyncette":
                continue
            imported = importlib.import_module(module)
            assert name is None or hasattr(imported, name), f"{where}: {module}.{name}"


def test_every_howto_page_has_tested_code() -> None:
    howtos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "howto").glob("*.md"))
    assert howtos
    for page in howtos:
        assert any(block.page == page for block in ALL_BLOCKS), f"{page} has no Python block"


DATA_FENCE = re.compile(r"^```(?P<language>yaml|json)\n(?P<body>.*?)^```$", re.M | re.S)


def test_every_yaml_and_json_block_parses() -> None:
    parsed = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in DATA_FENCE.finditer(path.read_text()):
            if block["language"] == "json":
                json.loads(block["body"])
            else:
                list(yaml.safe_load_all(block["body"]))
            parsed += 1
    assert parsed >= 2  # the DynamoDB table, the Kubernetes deployment


RUNNER = r"""
import ast, asyncio, json, sys, traceback

blocks = json.load(sys.stdin)
namespace = {"__name__": "docs_page"}
loop = asyncio.new_event_loop()
for block in blocks:
    for part, code in (("setup of", block["setup"]), ("", block["code"])):
        where = f"{block['page']}:{block['line']}"
        compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        try:
            result = eval(compiled, namespace)
            if asyncio.iscoroutine(result):
                loop.run_until_complete(result)
        except BaseException:
            print(f"The {part} block at {where} failed:", file=sys.stderr)
            traceback.print_exc()
            sys.exit(1)
loop.close()
"""


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_runs(page: str, tmp_path: Path) -> None:
    runnable = [block for block in ALL_BLOCKS if block.page == page and block.mode == "run"]
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([block.__dict__ for block in runnable]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _module_of(page: str) -> tuple[str, list[str]]:
    """The page's blocks as the body of one ``async def`` (so top-level ``await`` is
    checked as it runs), each preceded by its setup; and, for each line of it, the
    place in the page it comes from."""
    lines = ["async def _page() -> None:"]
    origins = [f"{page}:1"]
    for block in ALL_BLOCKS:
        if block.page != page:
            continue
        for line in block.setup.splitlines():
            lines.append(f"    {line}" if line.strip() else "")
            origins.append(f"the docs-test setup above {block.page}:{block.line}")
        for number, line in enumerate(block.code.splitlines(), start=block.line):
            lines.append(f"    {line}" if line.strip() else "")
            origins.append(f"{block.page}:{number}")
    return "\n".join(lines) + "\n", origins


def test_checked_pages_type_check(tmp_path: Path) -> None:
    assert CHECKED_PAGES
    origins: dict[str, list[str]] = {}
    for page in CHECKED_PAGES:
        name = re.sub(r"\W", "_", page.removesuffix(".md")) + ".py"
        source, origins[name] = _module_of(page)
        (tmp_path / name).write_text(source)
    config = tmp_path / "mypy.ini"
    # the reader's own modules (``myapp``) and frameworks not installed here are Any;
    # nested functions of a page may share a name (two examples of one thing)
    config.write_text(
        "[mypy]\n"
        "check_untyped_defs = True\n"
        "ignore_missing_imports = True\n"
        "disable_error_code = no-redef\n"
        f"mypy_path = {ROOT}:{ROOT / 'tests'}\n"
        f"cache_dir = {tmp_path / 'cache'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), *origins],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    def in_the_page(match: re.Match[str]) -> str:
        return origins[match["file"]][int(match["line"]) - 1] + ":"

    report = re.sub(r"^(?P<file>\w+\.py):(?P<line>\d+):", in_the_page, result.stdout, flags=re.M)
    assert result.returncode == 0, report + result.stderr
