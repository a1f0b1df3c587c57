"""The studio's one-screen suite result (``/suite/EXPERIMENT``), as the report's: in real Chromium against a real
``tracker studio`` process on a run store holding a prompt set with a planted effect (``test_promptsets``): per
category each variant's mean and paired interval, the prompts where the variants differ most, user text escaped
and the page under the content security policy."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO
from test_promptsets import PARTI, planted
from tracker.experiment import parse as spec
from tracker.experiment import plan
from tracker.metrics import Scores, storage
from tracker.store.runstore import Store

pytestmark = pytest.mark.slow

XSS = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2> a cat"


def _store(home, name: str, prompts: str, value=planted) -> None:
    """Experiment ``name`` planned and marked done with planted pickscore values (no images: not needed here)."""
    (home.parent / "sets").mkdir(exist_ok=True)
    (home.parent / "sets" / "parti.tsv").write_text(PARTI + f"{XSS}\tAnimals\tBasic\t\n")
    (home.parent / "sets" / "plain.txt").write_text("a red cube\na blue ball\n")
    path = home.parent / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: tiny\nsize: 64x64\nprompts: {prompts}\nsteps: [2, 3]\nseeds: \"0-5\"\n")
    exp = spec.parse_file(path)
    runs = plan.expand(exp).runs
    with Store.open(f"sqlite:///{home / 'tracker.db'}") as store:
        sweep = store.start_sweep(name, {"planned": len(runs)})
        store.save_experiment(name, exp.path, exp.source)
        store.plan_runs(sweep, runs)
        for r in runs:
            store.mark_done(name, r.key, seconds=1.0)
        storage.save(store, name, [r.key for r in runs],
                     Scores("pickscore", "1", True, {"pickscore": [value(r) for r in runs]}))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("suite") / "ws"
    home.mkdir()
    _store(home, "suite", "{file: sets/parti.tsv, label: Category}")
    _store(home, "flat", "sets/plain.txt", value=lambda r: 1.0)  # plain lines: no category axis
    proc = subprocess.Popen([sys.executable, "-m", "tracker", "--home", str(home), "studio", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)
    url, deadline = None, time.monotonic() + 120
    while time.monotonic() < deadline and url is None:
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", line or "")
        if not line and proc.poll() is not None:
            break
    assert url, "tracker studio printed no URL"
    yield {"base": url.group(1), "token": url.group(2)}
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)



def test_the_studio_shows_the_suite_result_on_one_screen(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"{server['base']}/?token={server['token']}")
    pg.goto(f"{server['base']}/e/suite?metric=pickscore")
    pg.click("#suite-link")  # the grid links to it when the runs have a prompt set's categories
    assert pg.url.endswith("/suite/suite?metric=pickscore")
    rows = pg.eval_on_selector_all("table.suite-table tbody tr", "els => els.map(e => e.dataset.group)")
    assert rows == ["all", "Artifacts", "Animals", "Outdoor Scenes", "Arts"]
    heads = pg.eval_on_selector_all("table.suite-table thead th", "els => els.map(e => e.textContent.trim())")
    assert heads == ["category", "2 (baseline)", "3"]
    animals = pg.text_content('tr[data-group="Animals"] td[data-label="3"]')
    diff = float(re.search(r"([+-]\d+\.\d+)", animals).group(1))
    low, high = map(float, re.search(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", animals).groups())
    assert 3.5 < diff < 4.5 and 0 < low < diff < high  # the planted +4, its interval excluding 0
    assert pg.get_attribute('tr[data-group="Animals"] td[data-label="3"]', "class") == "sure"
    assert pg.get_attribute('tr[data-group="Arts"] td[data-label="3"]', "class") is None
    groups = pg.eval_on_selector_all("table.suite-prompts tbody tr td:nth-child(2)", "els => els.map(e => e.textContent)")
    assert groups[:4] == ["Animals"] * 4  # the four animal prompts carry the planted +4
    texts = pg.eval_on_selector_all("table.suite-prompts td.prompt-text", "els => els.map(e => e.title)")
    assert XSS in texts  # shown as text
    assert pg.evaluate("window.pwned") is None and not errors
    pg.select_option('select[name="metric"]', "pickscore")
    ctx.close()


def test_the_suite_page_says_why_when_there_are_no_categories_and_has_a_csp(server):
    req = urllib.request.Request(f"{server['base']}/suite/flat", headers={"Cookie": f"tracker_studio={server['token']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body, csp = r.read().decode(), r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert 'id="suite-note"' in body and "has no category axis" in body and 'id="suite"' not in body
