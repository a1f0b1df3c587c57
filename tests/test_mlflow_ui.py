"""MLflow's own UI on the tracker's runs, in real Chromium (Playwright) against a real ``mlflow server``: a
4-run sweep of the ``shapes`` model logged by ``tracker run --mlflow-uri``, the UI's compare page for the 4 runs
and its "Image grid" compare chart, captioned with each run's axis values; and over the server's REST API the
``log_image`` entries the UI's image card and grid read."""

from __future__ import annotations

import io
import json
import re
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import REPO, run_tracker
from test_mlflow import KEY_TAG, PARENT_TAG
from test_mlflow_server import Server
from conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")]

SWEEP = """\
name: compare
model: shapes
prompt: "a {{ colour }} {{ shape }} on white"
axes:
  colour: [red, blue]
  shape: [circle, triangle]
seeds: [0]
steps: 20
"""
CAPTIONS = ["colour=red shape=circle seed=0", "colour=red shape=triangle seed=0",
            "colour=blue shape=circle seed=0", "colour=blue shape=triangle seed=0"]
UI_TIMEOUT_MS = 120_000  # the UI's first load on a busy 2-core machine


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A real ``mlflow server`` with the 4-run sweep logged to it by ``tracker run``."""
    root = tmp_path_factory.mktemp("mlflow-ui")
    server = Server(root)
    server.start()
    try:
        f = root / "compare.yaml"
        f.write_text(SWEEP)
        res = run_tracker("--home", root / "ws", "run", f, "-q", "--mlflow-uri", server.url, cwd=REPO)
        assert res.code == 0, res.out + res.err
        exp = json.loads(_get(f"{server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=compare"))
        exp_id = exp["experiment"]["experiment_id"]
        runs = _post(f"{server.url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
        yield {"url": server.url, "root": root, "experiment_id": exp_id, "runs": runs}
    finally:
        server.stop()


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _children(logged: dict) -> list[dict]:
    return [r for r in logged["runs"] if KEY_TAG in _tags(r)]


def test_rest_api_has_each_runs_log_image_entries(logged):
    """What the UI's image card and image grid read: the ``mlflow.loggedImages`` tag and, under ``images/``, the
    image at key ``image`` step 0 (full size and compressed), the full one with the tracker's pixels."""
    from PIL import Image

    url = logged["url"]
    children = _children(logged)
    assert sorted(r["info"]["run_name"] for r in children) == sorted(CAPTIONS)
    for run in children:
        tags, rid = _tags(run), run["info"]["run_id"]
        assert tags["mlflow.loggedImages"].lower() == "true"
        assert PARENT_TAG in tags
        query = urllib.parse.urlencode({"run_id": rid, "path": "images"})
        files = [f["path"] for f in json.loads(_get(f"{url}/api/2.0/mlflow/artifacts/list?{query}"))["files"]]
        full = [p for p in files if re.fullmatch(r"images/image\+step\+0\+timestamp\+\d+\+[0-9a-f-]+\.png", p)]
        small = [p for p in files if p.endswith("+compressed.webp")]
        assert len(full) == 1 and len(small) == 1, files
        got = Image.open(io.BytesIO(_get(f"{url}/get-artifact?{urllib.parse.urlencode({'path': full[0], 'run_uuid': rid})}")))
        png = logged["root"] / "ws" / "images" / "compare" / f"{tags[KEY_TAG]}.png"
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(Image.open(png).convert("RGB")))


@pytest.fixture(scope="module")
def page(logged):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(UI_TIMEOUT_MS)
        yield pg
        browser.close()


def test_compare_page_and_image_grid_show_the_4_images_with_their_axis_values(logged, page, tmp_path):
    from playwright.sync_api import expect

    url, exp_id = logged["url"], logged["experiment_id"]
    children = _children(logged)
    ids = [r["info"]["run_id"] for r in children]

    # the UI's compare page for the 4 runs (its route: #/compare-runs?runs=[...]&experiments=[...])
    page.goto(f"{url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp_id])}")
    page.get_by_text("Comparing 4 Runs from 1 Experiment").wait_for()
    for caption in CAPTIONS:
        assert page.get_by_text(caption, exact=True).first.is_visible()

    # the same 4 runs in the experiment's chart compare view (compareRunsMode=CHART), children of the sweep's run
    query = urllib.parse.urlencode({"compareRunsMode": "CHART", "searchFilter": "attributes.run_id IN (%s)"
                                    % ", ".join(f"'{i}'" for i in ids)})
    page.goto(f"{url}/#/experiments/{exp_id}/runs?{query}")
    page.locator('[role=row] button[data-component-id*="runnamecellrenderer"]').first.click()  # expand the sweep
    page.get_by_text(CAPTIONS[0], exact=True).first.wait_for()
    # switch to the image grid: Add chart > Image grid > the key "image" > Add chart
    page.get_by_role("button", name="Add chart").first.click()
    page.get_by_test_id("experiment-view-compare-runs-chart-type-image").click()
    dialog = page.get_by_role("dialog")
    dialog.locator('[data-component-id*="runschartsconfigureimagechart"]').first.click()
    page.get_by_role("option", name="image", exact=True).click()
    page.keyboard.press("Escape")  # close the key list, not the dialog
    page.get_by_test_id("experiment-view-compare-runs-chart-modal-confirm").click()
    dialog.wait_for(state="hidden")

    # the chart cards render only when scrolled into view; the new one is at the end of its section
    logged_image = "img[src*='images%2Fimage%2Bstep%2B0']"
    card = page.locator("[data-testid='experiment-view-compare-runs-card']").filter(has=page.locator(logged_image)).first
    page.mouse.move(700, 600)
    for _ in range(40):
        if card.count():
            break
        page.mouse.wheel(0, 400)
        page.wait_for_timeout(300)
    card.scroll_into_view_if_needed()
    images = card.locator(logged_image)
    expect(images).to_have_count(4)
    expect(images.first).to_be_visible()
    page.wait_for_function("sel => [...document.querySelectorAll(sel)].filter(e => e.complete && e.naturalWidth > 0)"
                           ".length >= 4", arg=logged_image)
    srcs = [images.nth(i).get_attribute("src") for i in range(4)]
    assert sorted(next(i for i in ids if i in s) for s in srcs) == sorted(ids)  # one image per run
    text = card.inner_text()
    for run, caption in zip(children, [r["info"]["run_name"] for r in children]):
        assert caption in text  # the caption: the run's name, its axis labels ...
        for k, v in [(t["key"], t["value"]) for t in run["data"]["params"] if t["key"].startswith("axis.")]:
            assert f"{k}={v}" in text  # ... and its params, the axis values among them
    # the card's full-screen view, for a screenshot at a readable size
    card.locator("button").first.click()
    full = page.get_by_role("dialog")
    expect(full.locator(logged_image)).to_have_count(4)
    page.wait_for_function("sel => [...document.querySelectorAll(sel)].filter(e => e.complete && e.naturalWidth > 0)"
                           ".length >= 4", arg=f"[role=dialog] {logged_image}")
    shot = tmp_path / "mlflow-image-grid.png"
    full.screenshot(path=str(shot))
    assert shot.stat().st_size > 1000
