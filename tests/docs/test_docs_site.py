"""The documentation site builds with ``mkdocs build --strict``, and that build fails on
a broken link, a broken cross-reference or a ``:::`` target that does not exist."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import griffe
import pytest
import yaml

from support import ROOT

BUILD_SECONDS = 300


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    command = ["build", "--strict", "--config-file", str(config), "--site-dir", str(site)]
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )


def test_the_site_builds(tmp_path: Path) -> None:
    result = mkdocs_build(ROOT / "mkdocs.yml", tmp_path)
    assert result.returncode == 0, result.stderr
    reference = (tmp_path / "reference" / "app" / "index.html").read_text()
    assert 'id="pyncette.app.Pyncette"' in reference  # rendered from the docstrings
    assert ":class:`" not in reference  # the docstrings' roles became links
    assert 'href="../context/#pyncette.context.PyncetteContext"' in reference
    assert (tmp_path / "howto" / "testing" / "index.html").exists()


def _site_with_one_page(tmp_path: Path, page: str) -> Path:
    """A copy of the project's configuration whose only page is ``page``."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    config["docs_dir"] = str(docs)
    config["nav"] = [{"Home": "index.md"}]
    python = config["plugins"][2]["mkdocstrings"]["handlers"]["python"]
    python["paths"] = [str(ROOT)]
    python["options"]["extensions"] = [
        str(ROOT / extension) for extension in python["options"]["extensions"]
    ]
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_broken_link_or_cross_reference_fails_the_build(tmp_path: Path) -> None:
    page = (
        "# Home\n\n[a page](nowhere.md), [a section](#nowhere) and "
        "[an object][pyncette.app.Nowhere]\n"
    )
    result = mkdocs_build(_site_with_one_page(tmp_path, page), tmp_path / "site")
    assert result.returncode != 0
    assert "nowhere.md" in result.stderr
    assert "#nowhere" in result.stderr
    assert "pyncette.app.Nowhere" in result.stderr


def test_a_missing_reference_target_fails_the_build(tmp_path: Path) -> None:
    page = "# Home\n\n::: pyncette.nowhere\n"
    result = mkdocs_build(_site_with_one_page(tmp_path, page), tmp_path / "site")
    assert result.returncode != 0
    assert "pyncette.nowhere" in result.stderr


def test_the_readme_links_to_files_that_exist() -> None:
    """The README is read on the forge, outside the site: its relative links name files."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    relative = [link for link in links if "://" not in link]
    assert "docs/reference/index.md" in relative
    assert [link for link in relative if not (ROOT / link).exists()] == []


def test_a_docstring_role_naming_nothing_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The reference's griffe extension turns the docstrings' reST roles into links, and
    warns (failing ``--strict``) about a role whose object does not exist."""
    spec = importlib.util.spec_from_file_location(
        "griffe_rst", ROOT / "docs" / "reference" / "griffe_rst.py"
    )
    assert spec is not None and spec.loader is not None
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    package = griffe.load("pyncette", search_paths=[str(ROOT)])
    scope = package["app.Pyncette"]

    link = extension.convert(":meth:`create` and :class:`~pyncette.PyncetteContext`", scope)
    assert link == (
        '<autoref identifier="pyncette.app.Pyncette.create" optional><code>create</code>'
        '</autoref> and <autoref identifier="pyncette.context.PyncetteContext" optional>'
        "<code>PyncetteContext</code></autoref>"
    )
    assert extension.convert(":mod:`zoneinfo`::", scope) == "<code>zoneinfo</code>:"
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert extension.convert(":func:`nowhere`", scope) == "<code>nowhere</code>"
    assert [r.name for r in caplog.records] == ["mkdocs.plugins.pyncette.griffe_rst"]
    assert "'nowhere', which does not exist" in caplog.text
