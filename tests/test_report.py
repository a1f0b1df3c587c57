"""``tracker report`` in real headless Chromium: grids, placeholders, run details, efficiency, escaping.

The workspace is real: an experiment planned with spec/plan, stored with Store.plan_runs, real PNGs
written with PIL and marked done with their sha256. One browser for the whole module (CI has 2 cores).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw

from conftest import REPO, wait_in_page

ARTIFACTS = REPO / "test-artifacts"

# Payloads: each would set window.__xss or open an alert if it ever became markup or script.
XSS_SCRIPT = "<script>window.__xss=1;alert(1)</script>"
XSS_IMG = '"><img src=x onerror="window.__xss=2;alert(2)">'

PROBE = {
    "name": "probe",
    "description": "probe experiment " + XSS_SCRIPT,
    "model": "tiny",
    "size": "64x64",
    "steps": 2,
    "prompt": "portrait photo of {{ age }} warrior chief{{ style }}",
    "axes": {
        "age": {"oldest": "the oldest", "old": "a old", "plain": "a", XSS_IMG: "a " + XSS_SCRIPT},
        "style": {"plain": "", "tribal": ", tribal panther make up " + XSS_IMG},
    },
    "seeds": [1, 2],
    "variants": "off",  # the payloads hold "__", which Dynamic Prompts reads as a wildcard
}
AGES = ["oldest", "old", "plain", XSS_IMG]


# ---------------------------------------------------------------------------------------------
# building a workspace (also used by test_grid.py)


def make_workspace(home: Path, experiment: dict, *, failed: dict[int, str] | None = None,
                   pending: set[int] = frozenset(), size: tuple[int, int] | None = None, timing=None):
    """Plan ``experiment`` into a real store under ``home`` and write a real PNG for each run, except
    runs listed in ``failed`` (index -> error, marked failed) or ``pending`` (left not run).
    Returns (workspace, plan runs)."""
    from tracker.experiment.plan import expand
    from tracker.experiment.parse import parse
    from tracker.store.runstore import Store
    from tracker.workspace import WorkspaceConfig

    text = yaml.safe_dump(experiment, sort_keys=False, allow_unicode=True)
    ws = WorkspaceConfig.from_options(home=str(home), no_mlflow=True).ensure()
    exp = parse(text, str(home / f"{experiment['name']}.yaml"))
    runs = expand(exp).runs
    failed = failed or {}
    with Store.open(ws.db_url) as store:
        store.save_experiment(exp.name, str(home / f"{exp.name}.yaml"), text)
        sweep = store.start_sweep(exp.name, {"command": "test", "planned": len(runs)})
        store.plan_runs(sweep, runs)
        for i, run in enumerate(runs):
            if i in failed:
                store.mark_failed(exp.name, run.key, failed[i])
            elif i not in pending:
                t = timing(run) if timing else {"seconds": 0.5 + i / 100, "peak_memory_bytes": (i + 1) * 2**20}
                write_image(ws, store, run, i, size or (run.settings.width, run.settings.height), t)
    return ws, runs


def write_image(ws, store, run, i: int, size: tuple[int, int], timing: dict) -> Path:
    path = ws.image_path(run.experiment, run.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, ((40 * i) % 256, (90 + 17 * i) % 256, 200))
    ImageDraw.Draw(im).text((3, 3), str(i), fill=(255, 255, 255))
    im.save(path)
    fields = {"seconds_per_step": 0.01, "batch_size_used": 2, "device": "cpu", **timing}
    store.mark_done(run.experiment, run.key, image=path, image_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                    **fields)
    return path


# ---------------------------------------------------------------------------------------------
# fixtures: one workspace, one report, one browser


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    home = tmp_path_factory.mktemp("probe")
    ws, runs = make_workspace(home, PROBE, failed={3: "NaN in output <b>bold</b>"}, pending={5})
    from tracker.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--home", str(home), "report", "probe"])
    assert exc.value.code == 0
    index = home / "reports" / "probe" / "index.html"
    assert index.is_file()
    return ws, runs, index



class Page:
    """A loaded report page with everything that would reveal misbehaviour recorded."""

    def __init__(self, browser, index: Path):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(index.as_uri())

    def load_all_images(self, scope: str = "section.grid") -> list[int]:
        """Scroll every (lazy) image into view, wait until each has loaded, return their natural widths."""
        images = self.page.locator(f"{scope} img")
        for i in range(images.count()):
            images.nth(i).scroll_into_view_if_needed()
            images.nth(i).evaluate("img => img.complete || new Promise(ok => img.addEventListener('load', ok, {once: true}))")
        self.page.evaluate("window.scrollTo(0, 0)")
        return self.page.evaluate(f"[...document.querySelectorAll('{scope} img')].map(i => i.naturalWidth)")


@pytest.fixture(scope="module")
def page(browser, probe):
    p = Page(browser, probe[2])
    yield p
    p.page.close()


# ---------------------------------------------------------------------------------------------
# the page


def test_grids_rows_columns_and_headers(page):
    pg = page.page
    grids = pg.locator("section.grid")
    assert grids.count() == 2  # one per style
    assert [t.strip() for t in grids.locator("h2 .chip").all_inner_texts()] == ["style: plain", "style: tribal"]
    for g in range(2):
        grid = grids.nth(g)
        assert grid.locator("tbody tr").count() == 4
        assert grid.locator("thead th.col-header").count() == 2
        assert [t.strip() for t in grid.locator("thead th.col-header").all_inner_texts()] == ["seed 1", "seed 2"]
        rows = [grid.locator("th.row-header .axis-label").nth(i).inner_text().split("\n")[0].strip() for i in range(4)]
        assert rows == AGES
    ARTIFACTS.mkdir(exist_ok=True)
    page.load_all_images()
    pg.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)


def test_every_image_loads(page, probe):
    widths = page.load_all_images()
    done = 16 - 2  # one failed, one pending
    assert len(widths) == done
    assert all(w > 0 for w in widths), widths
    assert page.page.locator("section.grid img[loading=lazy]").count() == done
    # every image comes from the report folder itself
    srcs = page.page.evaluate("[...document.querySelectorAll('section.grid img')].map(i => i.getAttribute('src'))")
    assert all(s.startswith("thumbs/") and (probe[2].parent / s).is_file() for s in srcs)


def test_failed_and_missing_runs_are_labelled_placeholders(page):
    texts = page.page.locator(".placeholder").all_inner_texts()
    assert sorted(t.strip() for t in texts) == ["failed: NaN in output <b>bold</b>", "not run yet"]
    assert page.page.locator("td.state-failed").count() == 1
    assert page.page.locator("td.state-missing, td.state-pending").count() == 1


def test_prompt_marks_the_part_from_the_axis_value(page):
    row = page.page.locator("section.grid").nth(0).locator("th.row-header").nth(0)
    assert row.locator(".row-prompt").inner_text().strip() == "portrait photo of the oldest warrior chief"
    marks = row.locator("mark.hot")
    assert marks.count() == 1 and marks.inner_text() == "the oldest"
    assert marks.get_attribute("title") == "{{ age }}"
    tribal = page.page.locator("section.grid").nth(1).locator("th.row-header").nth(0)
    assert tribal.locator("mark.cold").inner_text().startswith(", tribal panther make up")


def test_header_shows_full_text_on_hover_and_click(page):
    header = page.page.locator("section.grid").nth(0).locator("th.row-header").nth(0)
    summary = header.locator("summary")
    assert summary.get_attribute("title") == "the oldest"
    full = header.locator(".full-text")
    assert not full.is_visible()
    summary.click()
    assert full.is_visible() and full.inner_text() == "the oldest"
    summary.click()


def test_clicking_a_cell_shows_its_recipe(page, probe):
    ws, runs, _ = probe
    pg = page.page
    pg.locator("section.grid").nth(0).locator("a.cell").first.click()
    dialog = pg.locator("#run-details")
    assert dialog.is_visible()
    key = runs[0].key
    assert pg.locator("#details-key").inner_text() == key
    recipe = dict(zip(pg.locator("#details-recipe th").all_inner_texts(), pg.locator("#details-recipe td").all_inner_texts()))
    assert recipe["prompt"] == runs[0].prompt
    assert recipe["seed"] == "1" and recipe["steps"] == "2" and recipe["size"] == "64x64"
    assert recipe["dtype"] == "float32" and recipe["guidance scale"] == "7.5"
    assert {"model", "scheduler", "scheduler options", "VAE", "memory options", "negative prompt"} <= recipe.keys()
    timings = dict(zip(pg.locator("#details-timings th").all_inner_texts(), pg.locator("#details-timings td").all_inner_texts()))
    assert timings["seconds"] == "0.500 s" and timings["peak memory"] == "1.0 MiB"
    assert pg.locator("#details-reproduce").inner_text().endswith(f"reproduce {key}")
    assert pg.locator("#details-mlflow").is_hidden()  # the run is not in MLflow: no link
    assert pg.evaluate("document.getElementById('details-image').naturalWidth") == 64
    pg.keyboard.press("Escape")
    assert not dialog.is_visible()


def test_failed_cell_details_show_the_error(page):
    pg = page.page
    pg.locator("td.state-failed .placeholder").click()
    assert pg.locator("#details-error").inner_text() == "error: NaN in output <b>bold</b>"
    assert pg.locator("#details-state").inner_text() == "failed"
    pg.keyboard.press("Escape")


def test_no_markup_or_script_from_user_text_runs(page):
    pg = page.page
    # open the details of every run carrying a payload: the dialog is filled from JSON at runtime
    shown = []
    for cell in pg.locator("section.grid [data-key]").all():
        cell.click()
        shown.append(pg.locator("#details-prompt").inner_text())
        pg.keyboard.press("Escape")
    assert len(shown) == 16  # failed and pending runs open their details too
    assert sum(XSS_SCRIPT in text for text in shown) == 4  # the XSS age row
    assert sum(XSS_IMG in text for text in shown) == 8  # the tribal grid
    assert pg.evaluate("typeof window.__xss") == "undefined"
    assert page.dialogs == []
    assert pg.locator("img[src=x]").count() == 0 and pg.locator("script:not([type]):not([id])").count() == 1
    # the payloads show as text
    body = pg.locator("body").inner_text()
    assert "probe experiment " + XSS_SCRIPT in body
    assert XSS_IMG in body and "a " + XSS_SCRIPT in body
    assert pg.title() == "probe · prompt-tracker report"


def test_efficiency_view(page):
    pg = page.page
    section = pg.locator("#efficiency")
    assert section.is_visible()
    header = section.locator("thead th").all_inner_texts()
    assert header[:5] == ["scheduler", "steps", "dtype", "batch", "memory options"]
    assert {"s / image", "images / s", "peak memory"} <= set(header)
    rows = section.locator("tbody tr")
    assert rows.count() == 1
    assert section.locator("svg.chart").count() == 2
    assert section.locator("svg rect.bar").count() == 2


def test_page_is_offline_and_error_free(page, probe):
    page.load_all_images()
    assert page.errors == []
    assert all(u.startswith("file://") for u in page.requests), page.requests
    html = probe[2].read_text()
    assert 'src="http' not in html and 'href="http' not in html and "@import" not in html
    assert 'loading="lazy"' in html


def test_copy_without_full_images_still_shows_every_run(browser, probe, tmp_path):
    """The copy attached to MLflow leaves out full/: grids and details fall back to the thumbnails."""
    import shutil

    from tracker.report.attach import mlflow_files

    index = probe[2]
    copy = tmp_path / "copy"
    copy.mkdir()
    for path, artifact in mlflow_files(index):
        dst = copy / Path(artifact).relative_to("report") / (path.name if path.is_file() else "")
        (shutil.copytree if path.is_dir() else shutil.copy)(path, dst)
    assert not (copy / "full").exists()
    page = Page(browser, copy / "index.html")
    try:
        assert all(w > 0 for w in page.load_all_images())
        page.page.locator("a.cell").first.click()
        wait_in_page(page.page, "() => document.getElementById('details-image').naturalWidth > 0")
        assert page.page.evaluate("document.getElementById('details-image').getAttribute('src')").startswith("thumbs/")
        page.page.keyboard.press("Escape")
        # the missing full image is the one failed request the browser reports; nothing else went wrong
        assert all("ERR_FILE_NOT_FOUND" in e for e in page.errors)
    finally:
        page.page.close()


# ---------------------------------------------------------------------------------------------
# the reproducibility check (``tracker verify``'s stored result)


def test_never_verified_shows_the_hint(page, probe):
    section = page.page.locator("#verify")
    assert section.locator("h2").inner_text() == "Reproducibility check"
    assert section.locator("table").count() == 0
    assert section.locator(".verify-hint code").inner_text() == f"tracker --home {probe[0].home} verify probe"


def store_verification(ws, experiment: str, rows, *, done: int, device: str = "cpu", warnings=()) -> None:
    """Store a verify result on the experiment's latest sweep exactly as ``tracker verify`` writes it
    (reproduce.Verification.to_json), without generating images."""
    from tracker.reproduce.verify import Verification, VerifyRow
    from tracker.store.runstore import Store

    with Store.open(ws.db_url) as store:
        sweep = store.sweeps(experiment)[-1]["id"]
        result = Verification(experiment, sweep, done, tuple(VerifyRow(k, labels, d) for k, labels, d in rows),
                              tuple(warnings), device)
        store.update_sweep(sweep, verify=result.to_json())


def test_verified_experiment_shows_each_sampled_run(browser, tmp_path):
    """The latest sweep that has a verify result is shown: counts, device, warnings, one row per
    sampled run with the drifted ones marked; labels (user text) stay text; a key opens the run."""
    from tracker.report.html import build
    from tracker.reproduce.regenerate import Drift
    from tracker.store.runstore import Store

    ws, runs = make_workspace(tmp_path / "home", {**PROBE, "name": "verified"})
    labels = lambda run: dict(run.axes)  # noqa: E731
    store_verification(ws, "verified", [(runs[0].key, labels(runs[0]), Drift(False, 9, 1.0, 10, 10))], done=16)
    with Store.open(ws.db_url) as store:  # a later sweep, verified again
        store.start_sweep("verified", {"command": "test"})
    xss_run = next(r for r in runs if dict(r.axes)["age"] == XSS_IMG)
    store_verification(ws, "verified", [
        (runs[1].key, labels(runs[1]), Drift(True, 0, 0.0, 0, 4096, None)),
        (xss_run.key, labels(xss_run), Drift(False, 3, 0.0123, 40, 4096, None)),
        (runs[2].key, labels(runs[2]), Drift.failed("no image was generated: " + XSS_SCRIPT)),
    ], done=16, device="cuda", warnings=["torch differs: 2.12 when the image was made, 2.13 now"])
    with Store.open(ws.db_url) as store:  # and a newer sweep never verified: the result above still shows
        store.start_sweep("verified", {"command": "test"})

    index, rep = build(ws, "verified", out=tmp_path / "report")
    assert rep.verify is not None and (rep.verify.sample, rep.verify.identical, rep.verify.drifted) == (3, 1, 2)
    page = Page(browser, index)
    try:
        section = page.page.locator("#verify")
        summary = section.locator(".verify-summary").inner_text()
        assert summary.startswith("1 of 3 sampled runs identical")
        assert "16 done" in summary and " on cuda " in summary
        assert "largest pixel difference 3" in summary and f"sweep {rep.verify.sweep_id}" in summary  # not the older one
        assert section.locator(".verify-warning").all_inner_texts() == [
            "warning: torch differs: 2.12 when the image was made, 2.13 now"]
        rows = section.locator("tbody tr")
        assert rows.count() == 3
        cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(3)]
        assert [c[0] for c in cells] == [runs[1].key, xss_run.key, runs[2].key]
        assert [c[2] for c in cells] == ["yes", "no", "no"]
        assert cells[1][3:6] == ["3", "0.0123", "40 of 4096"]
        assert cells[2][6] == "no image was generated: " + XSS_SCRIPT
        assert [rows.nth(i).get_attribute("class") for i in range(3)] == ["identical", "drifted", "drifted"]
        # the label with markup in it is a chip of text, in the table as everywhere else
        assert f"age: {XSS_IMG}" in rows.nth(1).locator(".chip").all_inner_texts()
        # a sampled run's key opens its details
        rows.nth(1).locator("button.key").click()
        assert page.page.locator("#details-key").inner_text() == xss_run.key
        page.page.keyboard.press("Escape")
        assert page.page.evaluate("typeof window.__xss") == "undefined"
        assert page.dialogs == [] and page.page.locator("img[src=x]").count() == 0
        assert page.errors == []
    finally:
        page.page.close()


# ---------------------------------------------------------------------------------------------
# building: layout, caching


def test_report_data_layout_and_counts(probe):
    from tracker.report.html import build

    ws, runs, _ = probe
    index, rep = build(ws, "probe", out=ws.home / "r-data")
    assert (rep.rows_axis, rep.cols_axis) == ("age", "seed")
    assert [g.combo for g in rep.grids] == [(("style", "plain"),), (("style", "tribal"),)]
    assert dict(rep.counts) == {"done": 14, "failed": 1, "missing": 1} or dict(rep.counts) == {"done": 14, "failed": 1, "pending": 1}
    assert len(rep.details) == 16 and all(g.png and (index.parent / g.png).is_file() for g in rep.grids)


def test_rows_and_cols_options_swap_the_layout(probe):
    from tracker.report.html import build

    ws, _, _ = probe
    _, rep = build(ws, "probe", rows="seed", cols="style", out=ws.home / "r-swap")
    assert (rep.rows_axis, rep.cols_axis) == ("seed", "style")
    assert len(rep.grids) == 4  # one per age
    assert [r.header.label for r in rep.grids[0].rows] == ["1", "2"]
    assert [c.label for c in rep.grids[0].columns] == ["plain", "tribal"]


def test_second_build_reuses_thumbnails_and_redoes_only_changed_runs(tmp_path):
    from tracker.report.html import build
    from tracker.store.runstore import Store

    ws, runs = make_workspace(tmp_path / "home", {**PROBE, "name": "cache"}, size=(320, 320))
    out = tmp_path / "report"
    build(ws, "cache", out=out)
    thumbs = {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").glob("*.jpg")}
    assert len(thumbs) == 16
    build(ws, "cache", out=out)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").glob("*.jpg")} == thumbs
    # one run's image changes: only its thumbnail is made again, the old one is removed
    with Store.open(ws.db_url) as store:
        write_image(ws, store, runs[4], 99, (320, 320), {"seconds": 1.0})
    _, rep = build(ws, "cache", out=out)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").glob("*.jpg")}
    assert len(after) == 16
    new = set(after) - set(thumbs)
    assert len(new) == 1 and len(set(thumbs) - set(after)) == 1
    assert all(after[n] == thumbs[n] for n in after if n in thumbs)
    assert len(list((out / "grids").glob("*.jpg"))) == len(rep.grids) == 2


def test_runs_of_an_earlier_plan_are_left_out_and_counted(tmp_path):
    from tracker.report.html import build
    from tracker.store.runstore import Store

    exp = {**PROBE, "name": "edited", "prompt": "photo of {{ age }}", "axes": {"age": {"old": "a old", "young": "a young"}},
           "seeds": [1, 2, 3]}
    ws, _ = make_workspace(tmp_path / "home", exp)
    narrowed = {**exp, "seeds": [1, 2]}
    with Store.open(ws.db_url) as store:
        store.save_experiment("edited", None, yaml.safe_dump(narrowed, sort_keys=False))
    _, rep = build(ws, "edited", out=tmp_path / "r")
    assert [c.label for c in rep.grids[0].columns] == ["1", "2"]
    assert any("2 stored runs" in n for n in rep.notes)


def test_highlight_template_and_diff():
    from tracker.report.highlight import highlight

    spans = highlight("photo of a old chief, 8k", "photo of {{ age }} chief{{ style }}")
    assert [(s.text, s.marked) for s in spans] == [("photo of ", False), ("a old", True), (" chief", False), (", 8k", True)]
    assert spans[1].axes == ("age",)
    # a template with control blocks: the words that differ from the other prompts are marked
    spans = highlight("photo of a young chief", "{% if x %}photo{% endif %}", ["photo of a old chief"])
    assert [s.text for s in spans if s.marked] == ["young"]


# ---------------------------------------------------------------------------------------------
# bad input


def test_unknown_axis_is_one_line_and_exit_2(cli, probe):
    ws, _, _ = probe
    for option in ("--rows", "--cols"):
        res = cli("--home", ws.home, "report", "probe", option, "agee")
        assert res.code == 2
        assert res.err.strip() == f"error: unknown axis 'agee' in {option}; known axes: age, style, seed"
    res = cli("--home", ws.home, "report", "probe", "--rows", "age", "--cols", "age")
    assert res.code == 2 and "both 'age'" in res.err and len(res.err.strip().splitlines()) == 1


def test_unknown_experiment_and_no_runs_yet(cli, tmp_path):
    from tracker.experiment.plan import expand
    from tracker.experiment.parse import parse
    from tracker.store.runstore import Store
    from tracker.workspace import WorkspaceConfig

    ws = WorkspaceConfig.from_options(home=str(tmp_path / "empty")).ensure()
    text = yaml.safe_dump({**PROBE, "name": "unrun"}, sort_keys=False)
    exp = parse(text)
    with Store.open(ws.db_url) as store:
        store.save_experiment("unrun", "unrun.yaml", text)
        store.plan_runs(store.start_sweep("unrun", {"command": "test"}), expand(exp).runs)
    res = cli("--home", ws.home, "report", "unrun")
    assert res.code == 2
    assert res.err.strip() == "error: experiment 'unrun' has no finished runs yet; generate them with `tracker run unrun.yaml` first"
    assert not (ws.reports_dir / "unrun").exists()
    res = cli("--home", ws.home, "report", "nosuch")
    assert res.code == 2
    assert res.err.strip() == "error: no experiment 'nosuch' in the run store; known experiments: unrun"
    # an empty workspace: a clear message, and no store created by asking
    res = cli("--home", tmp_path / "nothing", "report", "unrun")
    assert res.code == 2 and res.err.startswith("error: no run store at ") and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "nothing" / "tracker.db").exists()


# ---------------------------------------------------------------------------------------------
# end to end: tracker run on the tiny pipeline (MLflow on), then tracker report


E2E = """\
name: e2e
model: tiny
prompt: "portrait photo of {{ age }} warrior chief{{ style }}"
axes:
  age: {oldest: "the oldest", old: "a old", plain: "a", young: "a young"}
  style: {plain: "", tribal: ", tribal panther make up"}
seeds: [0, 1]
steps: 2
scheduler: DPMSolverMultistep
"""


def test_run_then_report_end_to_end(cli, write_yaml, browser, tmp_path):
    from urllib.parse import unquote, urlparse

    res = cli("run", write_yaml(E2E), "-q")
    assert res.code == 0, res.err
    res = cli("verify", "e2e", "--sample", "2")  # the real pipeline again: same pixels on the same machine
    assert res.code == 0 and "2 of 2 sampled runs identical" in res.out, res.out + res.err
    sampled = [line.split()[0] for line in res.out.strip().splitlines()[2:-1]]
    res = cli("report", "e2e")
    assert res.code == 0, res.err
    index = Path(unquote(urlparse(res.out.strip()).path))
    assert index == tmp_path / "home" / "reports" / "e2e" / "index.html"
    page = Page(browser, index)
    try:
        pg = page.page
        grids = pg.locator("section.grid")
        assert grids.count() == 2
        for g in range(2):
            grid = grids.nth(g)
            rows = grid.locator("th.row-header .axis-label summary").all_inner_texts()
            assert [r.strip() for r in rows] == ["oldest", "old", "plain", "young"]
            assert [c.strip() for c in grid.locator("th.col-header").all_inner_texts()] == ["seed 0", "seed 1"]
        widths = page.load_all_images()
        assert len(widths) == 16 and all(w == 64 for w in widths)
        pg.locator("a.cell").first.click()
        recipe = dict(zip(pg.locator("#details-recipe th").all_inner_texts(), pg.locator("#details-recipe td").all_inner_texts()))
        assert recipe["scheduler"].startswith("DPMSolverMultistepScheduler") and recipe["steps"] == "2"
        link = pg.locator("#details-mlflow-link")
        assert link.is_visible() and "#/runs/" in link.get_attribute("href")
        pg.keyboard.press("Escape")
        verify = pg.locator("#verify")
        assert verify.locator(".verify-summary").inner_text().startswith("2 of 2 sampled runs identical")
        assert verify.locator("tbody td:first-child").all_inner_texts() == sampled
        assert verify.locator("tbody td.verdict").all_inner_texts() == ["yes", "yes"]
        assert page.errors == [] and page.dialogs == []
    finally:
        pg.close()
    # the report is attached to the sweep's parent MLflow run
    import mlflow
    from tracker.store.runstore import Store

    home = tmp_path / "home"
    with Store.open(f"sqlite:///{home / 'tracker.db'}") as store:
        parent = store.sweeps("e2e")[-1]["mlflow_run_id"]
    assert parent
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    attached = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/index.html", "report/thumbs", "report/grids"} <= attached
    assert len(client.list_artifacts(parent, "report/grids")) == 2
    assert len([a for a in client.list_artifacts(parent, "report/thumbs") if a.path.endswith(".png")]) == 16
    # --no-mlflow: no links to MLflow in the page
    res = cli("report", "e2e", "--no-mlflow", "-o", tmp_path / "offline")
    assert res.code == 0, res.err
    assert run_data(tmp_path / "offline" / "index.html")[runs_key(home)]["mlflow_url"] is None
    assert run_data(index)[runs_key(home)]["mlflow_url"].startswith("http://127.0.0.1:")


def run_data(index: Path) -> dict:
    """The run details the page embeds (its JSON block)."""
    import json
    import re

    html = index.read_text()
    return json.loads(re.search(r'<script type="application/json" id="run-data">(.*?)</script>', html, re.S).group(1))


def runs_key(home: Path) -> str:
    from tracker.store.runstore import Store

    with Store.open(f"sqlite:///{home / 'tracker.db'}") as store:
        return store.runs("e2e")[0].key


def test_efficiency_reads_the_tutorial_story(tmp_path):
    """examples/efficient-diffusion.yaml with the tutorial's T4 timings: fp32 -> fp16 -> DPMSolver 20
    steps -> batch 4 out of memory -> batch 8 with attention slicing, one line each, in that order."""
    from tracker.report.html import build

    exp = yaml.safe_load((REPO / "examples" / "efficient-diffusion.yaml").read_text())
    exp["size"] = "64x64"
    seconds = {("fp32-pndm50", "batch1"): 30.0, ("fp16-pndm50", "batch1"): 11.0, ("fp16-dpm20", "batch1"): 4.0,
               ("fp16-dpm20", "batch8-sliced"): 3.5}

    def timing(run):
        labels = run.labels
        batch = run.settings.batch_size
        return {"seconds": seconds[(labels["setup"], labels["memory"])], "batch_size_used": batch,
                "peak_memory_bytes": (6 if run.settings.dtype == "float32" else 3) * 2**30 + batch * 2**28, "device": "cuda"}

    from tracker.experiment.plan import expand
    from tracker.experiment.parse import parse

    runs = expand(parse(yaml.safe_dump(exp))).runs
    oom = {i: "out of memory (batch of 4)" for i, r in enumerate(runs) if r.labels["memory"] == "batch4"}
    ws, runs = make_workspace(tmp_path / "home", exp, failed=oom, timing=timing)
    index, rep = build(ws, "efficient-diffusion", out=tmp_path / "r")
    assert [r.label for r in rep.efficiency] == [
        "PNDM · steps 50 · float32 · batch 1",
        "PNDM · steps 50 · float16 · batch 1",
        "DPMSolverMultistep · steps 20 · float16 · batch 1",
        "DPMSolverMultistep · steps 20 · float16 · batch 4",
        "DPMSolverMultistep · steps 20 · float16 · batch 8 · attention slicing",
    ]
    assert [r.seconds_per_image for r in rep.efficiency] == [30.0, 11.0, 4.0, None, 3.5]
    assert [r.failed for r in rep.efficiency] == [0, 0, 0, 8, 0]
    assert rep.efficiency[4].images_per_second == pytest.approx(1 / 3.5)
    assert rep.efficiency[0].seconds_frac == 1.0 and rep.efficiency[4].seconds_frac == pytest.approx(3.5 / 30)
    # the grids follow the file's grid: setup down, seeds across, one grid per memory setting
    assert (rep.rows_axis, rep.cols_axis) == ("setup", "seed")
    assert [g.combo for g in rep.grids] == [(("memory", "batch1"),), (("memory", "batch4"),), (("memory", "batch8-sliced"),)]
    html = index.read_text()
    assert html.count('class="bar bar-seconds"') == 5 and "out of memory (batch of 4)" in html


def test_highlight_always_reassembles_the_prompt():
    """Whatever the template and values, the spans put together are the prompt; given the template's
    values, each marked span is exactly what its expression produced, even when values repeat the
    template's own text or expressions touch."""
    from hypothesis import given, settings, strategies as st

    from tracker.report.highlight import highlight
    from tracker.prompts.templating import render

    text = st.text(alphabet=st.sampled_from(list("ab ,.<>&\"'-")), max_size=6)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(text, text), min_size=1, max_size=4), text, st.lists(text, max_size=3))
    def check(parts, tail, others):
        template = "".join(f"{lit}{{{{ v{i} }}}}" for i, (lit, _) in enumerate(parts)) + tail
        values = {f"v{i}": val for i, (_, val) in enumerate(parts)}
        prompt = render(template, values, None, "prompt", None)
        for variables in (None, values.items()):
            spans = highlight(prompt, template, others, variables)
            assert "".join(s.text for s in spans) == prompt
        assert [s.text for s in spans if s.marked] == [v for v in values.values() if v]
        assert all(render(s.source, values, None, "prompt", None) == s.text for s in spans if s.marked)

    check()
