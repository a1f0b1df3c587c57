"""The documentation site builds cleanly, its architecture page matches the tree, and the README is a front door.

``mkdocs build --strict`` renders every page of ``docs/`` with the real plugins: mkdocstrings reads
``tracker.api`` and ``tracker.results`` from their source, mkdocs-click imports ``tracker.cli`` and walks its
commands. In strict mode a link to a missing page or anchor, or a page left out of the navigation, fails the
build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCS = REPO / "docs"
ARCHITECTURE = DOCS / "architecture.md"
README = REPO / "README.md"
FIRST_SCREEN = 25  # lines of the README a reader sees before scrolling


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, env=env, cwd=config.parent, timeout=300)


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    proc = _mkdocs_build(REPO / "mkdocs.yml", site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in sorted(DOCS.glob("*.md")):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"{page.name} was not built"
    # the generated references are there, not empty pages
    api = (site / "python-api" / "index.html").read_text()
    for name in ("tracker.api.Experiment", "tracker.api.run", "tracker.api.open", "tracker.api.Workspace",
                 "tracker.results.Run", "tracker.results.RunList", "tracker.results.SweepResult"):
        assert f'id="{name}"' in api, f"the Python API page does not document {name}"
    cli = (site / "cli" / "index.html").read_text()
    from tracker.cli import COMMANDS

    for command in COMMANDS:
        assert re.search(rf'id="tracker-{command}"', cli), f"the CLI page does not document tracker {command}"
    assert (site / "img" / "report.png").is_file()


@pytest.mark.parametrize("breakage", ["broken link", "missing anchor", "page not in the navigation"])
def test_mkdocs_build_strict_fails_on_a_broken_site(tmp_path, breakage):
    """The build above can fail: the same site with one defect is refused."""
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    index = copy / "docs" / "index.md"
    if breakage == "broken link":
        index.write_text(index.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    elif breakage == "missing anchor":
        index.write_text(index.read_text() + "\nSee [a missing section](tutorial.md#no-such-section).\n")
    else:
        (copy / "docs" / "orphan.md").write_text("# Orphan\n")
    proc = _mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "Aborted with" in proc.stdout + proc.stderr


def _module_map() -> list[str]:
    """The paths listed in the architecture page's "Module map" section, in order."""
    text = ARCHITECTURE.read_text()
    section = re.search(r"^## Module map\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "docs/architecture.md has no '## Module map' section"
    return re.findall(r"^\s*- `(tracker/[^`]*)`", section.group(1), re.M)


def _tree() -> set[str]:
    """Every package (``tracker/name/``) and module under tracker/; a package's ``__init__.py`` is its package's
    entry, the top-level ``tracker/__init__.py`` its own. Folders without Python files (tracker/models/) are data."""
    root = REPO / "tracker"
    out: set[str] = set()
    for path in root.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" and path.parent != root:
            out.add(path.parent.relative_to(REPO).as_posix() + "/")
        else:
            out.add(rel)
    return out


def test_architecture_page_lists_every_package_and_module():
    listed = _module_map()
    duplicates = sorted({p for p in listed if listed.count(p) > 1})
    assert not duplicates, f"listed twice in docs/architecture.md: {duplicates}"
    tree = _tree()
    missing, stale = sorted(tree - set(listed)), sorted(set(listed) - tree)
    assert not missing and not stale, (f"docs/architecture.md's module map is out of date: missing {missing}, "
                                       f"no longer in the tree {stale}")


def test_readme_first_screen_says_what_it_is_and_shows_the_two_commands():
    lines = README.read_text().splitlines()
    screen = lines[:FIRST_SCREEN]
    commands = [line[4:] for line in screen if line.startswith("    ") and line.strip()]
    run = [c for c in commands if "pip install" in c and "tracker run examples/shapes.yaml" in c
           and "tracker report shapes" in c]
    test = [c for c in commands if "pip install" in c and ".[test]" in c and "-m pytest" in c]
    assert run, f"the README's first {FIRST_SCREEN} lines have no install-and-run command"
    assert test, f"the README's first {FIRST_SCREEN} lines have no test command"
    # .ci/run runs the first indented README line containing "-m pytest": it must be that test command
    ci = next(line[4:] for line in lines if re.match(r"^    .*-m pytest", line))
    assert ci == test[0]
    before = "\n".join(screen[:screen.index("    " + run[0])])
    assert "diffusers" in before and "experiment tracker" in before, "say what the tool is before the commands"


def test_readme_shows_the_report_and_links_resolve():
    text = README.read_text()
    assert "docs/img/report.png" in "\n".join(text.splitlines()[:FIRST_SCREEN])
    image = DOCS / "img" / "report.png"
    assert image.stat().st_size < 300_000
    links = re.findall(r"\]\(((?:docs/|\./)[^)#\s]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/") and link.endswith(".md") for link in links)
    for link in links:
        assert (REPO / link).exists(), f"README links to {link}, which does not exist"
