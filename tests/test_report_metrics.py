"""The report's metric views in real headless Chromium: the effects section (forest plots and tables
whose numbers are those of ``tracker effects --json``), a coloured badge per grid cell, and the metric
beside time in the efficiency view. The store is real, the metric values planted (+3 for style=bold)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_report import Page, make_workspace
from tracker.metrics import Scores, storage
from tracker.store.runstore import Store

EXP = {
    "name": "scored",
    "model": "tiny",
    "size": "64x64",
    "prompt": "a {{ style }} fox",
    "axes": {"style": ["plain", "bold", "soft"]},
    "steps": [2, 4],
    "seeds": [0, 1, 2, 3, 4, 5],
    "metrics": ["shapes"],
}


def quality(run) -> float:
    axes = dict(run.axes)
    shared = np.random.default_rng([run.seed, run.settings.steps]).normal(0, 2)
    return 20 + shared + 0.3 * np.random.default_rng([run.seed, run.index]).normal() + 3 * (axes["style"] == "bold")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    home = tmp_path_factory.mktemp("scored")
    ws, runs = make_workspace(home, EXP, pending={len(EXP["seeds"]) * 2 * 3 - 1})
    done = runs[:-1]
    with Store.open(ws.db_url) as store:
        storage.save(store, "scored", [r.key for r in done],
                     Scores("shapes", "1", True, {"shapes": [quality(r) for r in done],
                                                  "shapes.colour": [1.0] * len(done)}))
    from tracker.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--home", str(home), "report", "scored"])
    assert exc.value.code == 0
    return home, ws, done


@pytest.fixture(scope="module")
def page(browser, scored):  # noqa: F811
    p = Page(browser, scored[0] / "reports" / "scored" / "index.html")
    yield p
    p.page.close()


def test_effects_section_renders_and_matches_tracker_effects_json(page, scored, cli):
    home = scored[0]
    r = cli("--home", home, "effects", "scored", "--metric", "shapes", "--json")
    assert r.code == 0, r.err
    expected = json.loads(r.out)
    pg = page.page
    section = pg.locator("#effects")
    assert section.is_visible()
    assert pg.locator("nav a[href='#effects']").count() == 1
    assert section.locator(".effects-metric").count() == 1  # the parts (shapes.colour) get no section
    forests = section.locator(".forest")
    assert [forests.nth(i).get_attribute("data-axis") for i in range(forests.count())] == \
           [ax["axis"] for ax in expected["axes"]] == ["style", "steps"]
    for ax in expected["axes"]:
        forest = section.locator(f".forest[data-axis='{ax['axis']}']")
        assert forest.locator("svg.forest-plot").is_visible()
        assert forest.locator("svg .forest-row").count() == len(ax["labels"])
        for lab in ax["labels"]:
            row = forest.locator(f"tr[data-label='{lab['label']}']")
            for field in ("mean", "diff", "low", "high"):
                text = row.locator(f"td.{field}").inner_text()
                if lab[field] is None:
                    assert text == "—"
                else:
                    assert float(text) == pytest.approx(lab[field], abs=6e-5), (ax["axis"], lab["label"], field)
            assert int(row.locator("td.pairs").inner_text()) == lab["pairs"]
            assert ("sure" in (row.get_attribute("class") or "")) == bool(
                lab["low"] is not None and (lab["low"] > 0 or lab["high"] < 0))
    bold = next(lab for lab in expected["axes"][0]["labels"] if lab["label"] == "bold")
    assert bold["low"] > 0  # the planted +3 is found, and drawn solid
    assert section.locator(".forest[data-axis='style'] svg .forest-row.sure").count() >= 1


def test_every_scored_cell_has_a_badge_on_the_colour_scale(page, scored):
    _, _, done = scored
    pg = page.page
    badges = pg.locator("section.grid .badge")
    assert badges.count() == len(done)
    values = {r.key: quality(r) for r in done}
    best, worst = max(values, key=values.get), min(values, key=values.get)
    for key, bucket in ((best, "badge-q9"), (worst, "badge-q0")):
        badge = pg.locator(f"section.grid td:has(a[data-key='{key}']) .badge")
        assert bucket in badge.get_attribute("class")
        assert float(badge.inner_text()) == pytest.approx(values[key], abs=0.06)
    assert pg.locator("section.grid td.state-pending .badge").count() == 0


def test_efficiency_shows_the_metric_beside_time(page, scored):
    _, _, done = scored
    section = page.page.locator("#efficiency")
    header = section.locator("thead th").all_inner_texts()
    assert header[-1] == "shapes (mean)"
    rows = section.locator("tbody tr")
    assert rows.count() == 2
    for i, steps in enumerate((2, 4)):
        mean = np.mean([quality(r) for r in done if r.settings.steps == steps])
        assert float(rows.nth(i).locator("td.metric-mean").inner_text()) == pytest.approx(mean, abs=6e-4)
    assert "shapes" in section.locator("svg.chart").first.text_content()


def test_page_with_metrics_is_offline_and_error_free(page, scored):
    page.load_all_images()
    assert page.errors == [] and page.dialogs == []
    assert all(u.startswith("file://") for u in page.requests), page.requests


EDITED = """\
name: edited
model: shapes
prompt: "a {{{{ colour }}}} square on {background}"
axes:
  colour: [red, blue]
seeds: [0, 1, 2]
steps: 4
metrics: [shapes]
"""


@pytest.mark.slow
def test_an_edited_file_is_a_new_plan_version_and_every_view_shows_the_current_one(cli, write_yaml, tmp_path):
    """An experiment is its name; each sweep records its file's plan version on the experiment and on every run
    of that plan. After an edit (same labels, new prompt) effects, the report's effects and grids, runs, score
    and the API show the current version's runs, say how many of earlier versions they leave out, and pool them
    only when asked (--all-versions). A second file claiming the name while the first still names it is
    refused in one line."""
    import tracker

    path = write_yaml(EDITED.format(background="white"), "edited.yaml")
    assert cli("run", path, "--no-mlflow", "-q").code == 0
    old_keys = {r["key"] for r in json.loads(cli("runs", "edited", "--json").out)}
    path.write_text(EDITED.format(background="black"))  # the same labels, another prompt: other images
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0 and "6 done" in res.out, res.out

    listed = cli("runs", "edited", "--json")
    current = {r["key"] for r in json.loads(listed.out)}
    assert len(current) == 6 and not current & old_keys
    assert "6 runs of earlier versions of the experiment file not listed" in listed.err
    assert len(json.loads(cli("runs", "edited", "--json", "--all-versions").out)) == 12
    home = tmp_path / "home"
    assert {r.key for r in tracker.open(home).runs("edited")} == current
    assert len(tracker.open(home).runs("edited", all_versions=True)) == 12

    fx = json.loads(cli("effects", "edited", "--metric", "shapes", "--json").out)
    assert fx["other_versions"] == 6
    assert {e["label"]: e["runs"] for e in fx["axes"][0]["labels"]} == {"red": 3, "blue": 3}
    pooled = json.loads(cli("effects", "edited", "--metric", "shapes", "--json", "--all-versions").out)
    assert {e["label"]: e["runs"] for e in pooled["axes"][0]["labels"]} == {"red": 6, "blue": 6}
    text = cli("effects", "edited", "--metric", "shapes").out
    assert "6 run(s) of earlier versions of the experiment file left out" in text

    assert "shapes: 6 images scored" in cli("score", "edited", "-q").out  # the current plan only

    rep = cli("report", "edited", "-o", tmp_path / "rep")
    assert rep.code == 0, rep.err
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "6 stored runs of an earlier version of the experiment file are not in the current plan" in html
    assert "6 run(s) of earlier versions of the experiment file left out" in html  # its effects agree

    other = write_yaml(EDITED.format(background="grey"), "copy.yaml")  # a copy that kept the name
    res = cli("run", other, "--no-mlflow", "-q")
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert "copy.yaml: name: 'edited' is already the experiment of" in res.err and "edited.yaml" in res.err
    assert len(json.loads(cli("runs", "edited", "--json", "--all-versions").out)) == 12  # nothing written
    path.rename(tmp_path / "moved.yaml")  # the same experiment, moved: carries on
    moved = cli("run", tmp_path / "moved.yaml", "--no-mlflow", "-q")
    assert moved.code == 0 and "0 done, 6 skipped" in moved.out, moved.out + moved.err
