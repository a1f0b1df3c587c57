"""Metrics in a real sweep of the built-in ``shapes`` model: scored after the images are written,
stored, shown by ``tracker runs``, scored again by ``tracker score`` without regenerating; a CLIP
model that is not available offline is one warning line and nothing else fails."""

from __future__ import annotations

import json

import pytest

from test_metrics import build_tiny_clip
from tracker import metrics

FILE = """
name: {name}
model: shapes
prompt: "a {{{{ colour }}}} square on white"
axes:
  colour: [red, blue]
seeds: [0, 1]
steps: 8
{extra}
"""


@pytest.fixture(autouse=True)
def _fresh_cache():
    metrics.clear_cache()
    yield
    metrics.clear_cache()


def write(write_yaml, name: str, extra: str = "") -> str:
    return str(write_yaml(FILE.format(name=name, extra=extra), f"{name}.yaml"))


@pytest.mark.slow
def test_sweep_scores_stores_and_rescores_without_regenerating(cli, write_yaml):
    from tracker.images import pngmeta

    path = write(write_yaml, "scored", "metrics: [shapes]")
    r = cli("run", path, "--no-mlflow", "-q")
    assert r.code == 0, r.err
    rows = json.loads(cli("runs", "scored", "--json").out)
    assert len(rows) == 4
    for row in rows:
        m = row["metrics"]
        assert set(m) == {"shapes", "shapes.colour", "shapes.shape", "shapes.background"}
        assert m["shapes"] == pytest.approx((m["shapes.colour"] + m["shapes.shape"] + m["shapes.background"]) / 3)
    assert sum(row["metrics"]["shapes.colour"] for row in rows) >= 3
    shown = json.loads(cli("show", rows[0]["key"], "-e", "scored", "--json").out)
    assert shown["metrics"] == rows[0]["metrics"]

    # the PNG recipe is about the image: the same runs made without metrics carry the same fields
    plain = write(write_yaml, "plain")
    assert cli("run", plain, "--no-mlflow", "-q").code == 0
    for row in rows:
        other = json.loads(cli("show", row["key"], "-e", "plain", "--json").out)
        (text_m, recipe_m), (text_p, recipe_p) = (pngmeta.read_png(p) for p in (row["image"], other["image"]))
        assert set(recipe_m) == set(recipe_p) and recipe_m["key"] == recipe_p["key"] == row["key"]
        assert "shapes" not in json.dumps(recipe_m).replace('"shapes"', "") and "metric" not in text_m

    mtimes = {row["key"]: __import__("os").stat(row["image"]).st_mtime_ns for row in rows}
    again = cli("score", "scored", "-q")
    assert again.code == 0 and "shapes: 4 images scored" in again.out
    rescored = {x["key"]: x["metrics"] for x in json.loads(cli("runs", "scored", "--json").out)}
    assert rescored == {row["key"]: row["metrics"] for row in rows}
    assert {row["key"]: __import__("os").stat(row["image"]).st_mtime_ns for row in rows} == mtimes

    fx = cli("effects", "scored", "--metric", "shapes.colour")
    assert fx.code == 0 and "colour (baseline red" in fx.out


@pytest.mark.slow
def test_missing_clip_weights_offline_warn_once_and_the_sweep_goes_on(cli, write_yaml, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    path = write(write_yaml, "noclip", "metrics: [clip_score, shapes]")
    r = cli("run", path, "--no-mlflow", "-q")
    assert r.code == 0, r.err
    warnings = [line for line in r.err.splitlines() if "clip" in line.lower()]
    assert len(warnings) == 1 and "openai/clip-vit-base-patch16" in warnings[0] and "hf download" in warnings[0]
    rows = json.loads(cli("runs", "noclip", "--json").out)
    assert all(row["status"] == "done" and "shapes" in row["metrics"] and "clip_score" not in row["metrics"]
               for row in rows)

    # scored later with a local CLIP folder; the missing one is one line and exit 2, shapes still scored
    bad = cli("score", "noclip", "-q")
    assert bad.code == 2 and "shapes: 4 images scored" in bad.out
    warnings = [line for line in bad.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "openai/clip-vit-base-patch16" in warnings[0] and "Traceback" not in bad.err
    folder = build_tiny_clip(tmp_path / "clip")
    write_yaml(FILE.format(name="noclip", extra=f"metrics: [clip_score]\nmetric_options: {{clip_score: {{model: {folder}}}}}"),
               "noclip.yaml")
    assert cli("run", path, "--no-mlflow", "-q").code == 0  # nothing to generate; the file is stored again
    ok = cli("score", "noclip", "--metric", "clip_score", "-q")
    assert ok.code == 0 and "clip_score: 4 images scored" in ok.out, ok.err
    rows = json.loads(cli("runs", "noclip", "--json").out)
    assert all(isinstance(row["metrics"]["clip_score"], float) for row in rows)


def test_unknown_metric_in_the_file_is_one_line(cli, write_yaml):
    path = write(write_yaml, "typo", "metrics: [clipscore]")
    r = cli("expand", path)
    assert r.code == 2 and r.err.count("\n") == 1
    assert "metrics[0]" in r.err and "unknown metric 'clipscore'" in r.err and "did you mean 'clip_score'" in r.err
    path = write(write_yaml, "typo2", "metrics: [shapes]\nmetric_options: {shapes: 3}")
    r = cli("expand", path)
    assert r.code == 2 and "metric_options.shapes" in r.err


def test_score_without_metrics_says_how(cli, write_yaml, tmp_path):
    from tracker.store.runstore import Store

    with Store.open(f"sqlite:///{tmp_path / 'home' / 'tracker.db'}") as store:
        store.save_experiment("bare", None, FILE.format(name="bare", extra=""))
    r = cli("score", "bare")
    assert r.code == 2 and "names no metrics" in r.err and "--metric NAME" in r.err
    r = cli("score", "nothing")
    assert r.code == 2 and "no experiment 'nothing'" in r.err


@pytest.mark.slow
def test_score_skips_swapped_and_deleted_images_and_effects_leave_their_values_out(cli, write_yaml):
    """``tracker score`` does not rescore an image whose bytes differ from its recorded sha256 (swapped on disk:
    the other picture's value would land on the run) nor a deleted one: it says so in a line, and drops their old
    values. ``effects`` never uses a value whose image is missing or modified without saying so."""
    import os
    import shutil

    path = write(write_yaml, "swapped", "metrics: [shapes]")
    assert cli("run", path, "--no-mlflow", "-q").code == 0
    rows = sorted(json.loads(cli("runs", "swapped", "--json").out), key=lambda r: r["key"])
    before = {r["key"]: r["metrics"]["shapes.colour"] for r in rows}
    red = next(r for r in rows if r["axes"]["colour"] == "red")
    blue = next(r for r in rows if r["axes"]["colour"] == "blue")
    shutil.copyfile(blue["image"], red["image"])  # a blue picture where the red run's image was
    gone = next(r for r in rows if r["key"] not in (red["key"], blue["key"]))
    os.remove(gone["image"])

    fx = cli("effects", "swapped", "--metric", "shapes.colour")  # before any rescore: the two old values left out
    assert fx.code == 0 and "2 value(s) left out: their images are missing or modified" in fx.out, fx.out
    res = cli("score", "swapped", "-q")
    assert res.code == 0, res.err
    assert "shapes: 2 images scored" in res.out
    assert "1 image(s) of swapped not scored: their bytes differ from the sha256 recorded" in res.err
    assert "1 image(s) of swapped not scored: missing" in res.err and "tracker check --fix swapped" in res.err
    after = {r["key"]: r["metrics"] for r in json.loads(cli("runs", "swapped", "--json").out)}
    assert after[red["key"]] == {} and after[gone["key"]] == {}  # old values dropped, no wrong new one
    assert all(after[k]["shapes.colour"] == before[k] for k in after if k not in (red["key"], gone["key"]))
    fx = cli("effects", "swapped", "--metric", "shapes.colour", "--json")
    assert json.loads(fx.out)["images_gone"] == 0  # nothing left to leave out: the values are gone


@pytest.mark.slow
def test_a_custom_metric_whose_constructor_raises_is_a_warning_and_the_sweep_goes_on(cli, write_yaml, tmp_path,
                                                                                     monkeypatch):
    """A metric from the entry point group whose __init__ raises: one warning line, every run done over several
    batches, the other metrics scored (the README's promise); it used to end the sweep after one batch."""
    import sys
    import textwrap

    site = tmp_path / "site"
    (site / "exploding_metric").mkdir(parents=True)
    (site / "exploding_metric" / "__init__.py").write_text(textwrap.dedent('''
        class Exploding:
            name, higher_is_better, version = "exploding", True, "1"

            def __init__(self, options, device):
                raise RuntimeError("no GPU driver found\\nsecond line")

            def score(self, images, runs):
                return [0.0 for _ in images]
    '''))
    dist = site / "exploding_metric-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: exploding-metric\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{metrics.ENTRY_POINT_GROUP}]\nexploding = exploding_metric:Exploding\n")
    monkeypatch.syspath_prepend(str(site))
    path = write(write_yaml, "explodes", "metrics: [exploding, shapes]\nbatch_size: 1")
    r = cli("run", path, "--no-mlflow", "-q")
    monkeypatch.delitem(sys.modules, "exploding_metric", raising=False)
    assert r.code == 0, r.err
    assert "4 done" in r.out and "Traceback" not in r.err
    warned = [line for line in r.err.splitlines() if "exploding" in line]
    assert len(warned) == 1 and "could not be built: RuntimeError: no GPU driver found" in warned[0], r.err
    assert "goes on without it" in warned[0]
    rows = json.loads(cli("runs", "explodes", "--json").out)
    assert len(rows) == 4 and all("shapes" in row["metrics"] and "exploding" not in row["metrics"] for row in rows)
