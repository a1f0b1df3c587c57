"""Shared fixtures: run the real CLI in-process, and a workspace in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helper modules (pgcluster, families)
EXAMPLES = REPO / "examples"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    """Call ``tracker ARGS...`` in this process; returns exit code, stdout and stderr."""
    from tracker.cli import main

    monkeypatch.setenv("TRACKER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRACKER_DB_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def call(*args: str) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def run_tracker(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600) -> Result:
    """Run ``tracker`` in a fresh process (for the parts that need a real process: kill -9, import costs)."""
    proc = subprocess.run([sys.executable, "-m", "tracker", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@contextmanager
def tracker_process(*args: str, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """``tracker ARGS`` started in a fresh process (output piped, as text), to signal or kill while it works;
    killed on the way out if it is still running."""
    proc = subprocess.Popen([sys.executable, "-m", "tracker", *map(str, args)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture
def write_yaml(tmp_path):
    """Write a YAML experiment file (dedented) into tmp_path and return its path."""
    def write(text: str, name: str = "exp.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the whole test session (see tests/pgcluster.py)."""
    from pgcluster import Cluster

    with Cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(postgres) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return postgres.new_database()


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """``family_model("sdxl")``: the folder of that family's tiny diffusers pipeline (tests/families.py), built once
    per test session."""
    from families import cached

    root = tmp_path_factory.mktemp("families")
    return lambda family: cached(family, root)


@pytest.fixture(scope="session")
def family_single_file(family_model, tmp_path_factory):
    """``family_single_file("sd15")``: that family's tiny model as one original-layout (A1111) ``.safetensors``
    file, written once per test session; load it with ``config=family_model(family)``."""
    from families import cached_single_file

    root = tmp_path_factory.mktemp("single-files")
    return lambda family: cached_single_file(family, family_model(family), root)


@pytest.fixture(scope="session")
def conditioning_model(family_model, tmp_path_factory):
    """``conditioning_model("controlnet", "sd15")``: a tiny ControlNet, IP-Adapter (``"ip_adapter"``) or SDXL refiner
    (``"refiner", "sdxl"``) for that family's tiny pipeline (tests/conditioning.py), built once per test session."""
    from conditioning import cached

    root = tmp_path_factory.mktemp("conditioning")
    return lambda kind, family: cached(kind, family, family_model(family), root)


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium, installed by the README's test command
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def wait_in_page(page, predicate: str, arg=None, timeout_ms: int = 30_000):
    """``page.wait_for_function`` for pages with a content security policy: Playwright polls that one by
    evaluating a string in the page, which a CSP without 'unsafe-eval' refuses whenever the predicate is not true
    at once (a race a loaded machine loses). Here the predicate, a JS function's source (``"k => ..."``), is
    sent with ``evaluate`` and polled in the page with ``setTimeout``; its first truthy value is returned."""
    return page.evaluate(
        f"""([arg, limit]) => new Promise((ok, fail) => {{
            const predicate = {predicate};
            const start = performance.now();
            const tick = () => {{
                let value;
                try {{ value = predicate(arg); }} catch (e) {{ return fail(e); }}
                if (value) return ok(value);
                if (performance.now() - start > limit) return fail(new Error("timed out waiting for the page"));
                setTimeout(tick, 50);
            }};
            tick();
        }})""", [arg, timeout_ms])


@pytest.fixture(scope="module")
def browser():
    """Chromium through Playwright, one per test module (the report, studio and MLflow UI tests)."""
    from playwright.sync_api import sync_playwright  # a test dependency: missing is a failure, not a skip

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium is required at {CHROMIUM} for the browser tests")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
