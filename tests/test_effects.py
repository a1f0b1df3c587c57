"""Axis effects on a synthetic run store with a planted effect: +5 for one label of one axis, noise
everywhere else. The paired interval excludes 0 where the effect is and covers 0 where it is not;
the CLI (``tracker effects``, ``tracker runs`` with metrics) reads the same store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tracker.metrics import effects as fx
from tracker.experiment import plan, parse as spec
from tracker.metrics import Scores, storage
from tracker.store.runstore import Store

SPEC = """
name: planted
model: tiny
size: 64x64
prompt: "a {{ style }} portrait, {{ light }}"
axes:
  style: [plain, bold, soft]
  light: [day, night]
seeds: "0-11"
"""


def planted(run) -> float:
    """Noise per (seed, light) shared by every style (what pairing removes), a little per-run noise,
    and +5 for style=bold."""
    axes = dict(run.axes)
    shared = np.random.default_rng([run.seed, len(axes["light"])]).normal(0, 3)
    own = np.random.default_rng([run.seed, len(axes["light"]), len(axes["style"]), 7]).normal(0, 1)
    return 50 + shared + own + (5.0 if axes["style"] == "bold" else 0.0)


def fill_store(url: str) -> list:
    exp = spec.parse(SPEC, "planted.yaml")
    runs = plan.expand(exp).runs
    with Store.open(url) as store:
        sweep = store.start_sweep("planted", {"planned": len(runs)})
        store.save_experiment("planted", "planted.yaml", SPEC)
        store.plan_runs(sweep, runs)
        for r in runs:
            store.mark_done("planted", r.key, seconds=1.0 + (r.seed % 3))
        storage.save(store, "planted", [r.key for r in runs],
                     Scores("quality", "1", True, {"quality": [planted(r) for r in runs]}))
    return runs


@pytest.fixture
def store_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'home' / 'tracker.db'}"
    fill_store(url)
    return url


def by_label(result: fx.Effects, axis: str) -> dict[str, fx.LabelEffect]:
    return {e.label: e for ax in result.axes if ax.axis == axis for e in ax.labels}


def test_planted_effect_is_found_and_absent_effects_are_not(store_url):
    with Store.open(store_url) as store:
        result = storage.effects(store, "planted", "quality")
    assert [ax.axis for ax in result.axes] == ["style", "light"]  # seed pairs, it is no effect
    style = by_label(result, "style")
    assert style["plain"].diff is None and style["plain"].runs == 24  # the baseline: first label
    bold, soft = style["bold"], style["soft"]
    assert bold.pairs == soft.pairs == 24
    assert bold.low > 0 and 4 < bold.diff < 6 and bold.excludes_zero
    assert soft.low < 0 < soft.high and not soft.excludes_zero
    light = by_label(result, "light")["night"]
    assert light.pairs == 36 and light.low < light.diff < light.high
    assert style["bold"].mean == pytest.approx(style["plain"].mean + bold.diff)  # balanced design


def test_interval_is_reproducible_and_depends_on_the_seed(store_url):
    with Store.open(store_url) as store:
        a = storage.effects(store, "planted", "quality", axes=["style"])
        b = storage.effects(store, "planted", "quality", axes=["style"])
        c = storage.effects(store, "planted", "quality", axes=["style"], seed=1)
    assert a == b
    assert by_label(a, "style")["bold"].low != by_label(c, "style")["bold"].low


def test_baseline_option_and_pairs_only_where_both_labels_exist(store_url):
    with Store.open(store_url) as store:
        result = storage.effects(store, "planted", "quality", axes=["style"], baseline="bold")
    style = by_label(result, "style")
    assert result.axes[0].baseline == "bold"
    assert style["plain"].high < 0 and style["soft"].high < 0  # both lose ~5 against bold
    obs = [fx.Observation({"style": s, "seed": str(seed)}, 1.0 + (s == "b")) for s in "ab" for seed in range(4)]
    obs = [o for o in obs if not (o.axes["style"] == "b" and o.axes["seed"] == "3")]  # one pair broken
    r = fx.analyze(obs, "m")
    b = by_label(r, "style")["b"]
    assert (b.pairs, b.runs, b.diff, b.low, b.high) == (3, 3, 1.0, 1.0, 1.0)


def test_bad_axis_baseline_and_metric_are_usage_errors(store_url, cli):
    from tracker.errors import UsageError

    with Store.open(store_url) as store:
        with pytest.raises(UsageError, match="runs are paired by seed"):
            storage.effects(store, "planted", "quality", axes=["seed"])
        with pytest.raises(UsageError, match="no such axis.*known: style, light"):
            storage.effects(store, "planted", "quality", axes=["mood"])
        with pytest.raises(UsageError, match="no analysed axis has that label"):
            storage.effects(store, "planted", "quality", baseline="loud")
        with pytest.raises(UsageError, match="no values for it; scored: quality"):
            storage.effects(store, "planted", "clip_score")


def test_effects_cli_text_and_json(store_url, cli, tmp_path):
    r = cli("effects", "planted", "--metric", "quality", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["experiment"] == "planted" and data["metric"] == "quality" and data["resamples"] == fx.RESAMPLES
    bold = next(e for ax in data["axes"] if ax["axis"] == "style" for e in ax["labels"] if e["label"] == "bold")
    assert bold["pairs"] == 24 and bold["low"] > 0
    text = cli("effects", "planted", "--metric", "quality", "--axis", "style")
    assert text.code == 0 and "style (baseline plain; quality, higher is better)" in text.out
    bold_line = next(line for line in text.out.splitlines() if line.startswith("bold"))
    assert f"+{bold['diff']:.3f}" in bold_line and bold_line.rstrip().endswith("24") and "*" in bold_line
    bad = cli("effects", "planted", "--metric", "quality", "--axis", "mood")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "Traceback" not in bad.err


def test_runs_json_where_and_sort_by_metric(store_url, cli):
    r = cli("runs", "planted", "--json")
    rows = json.loads(r.out)
    assert len(rows) == 72 and all(math.isfinite(x["metrics"]["quality"]) for x in rows)
    good = json.loads(cli("runs", "planted", "--where", "quality>55", "--where", "style=bold", "--json").out)
    assert good and all(x["metrics"]["quality"] > 55 and x["axes"]["style"] == "bold" for x in good)
    ranked = json.loads(cli("runs", "planted", "--sort", "-quality", "--json").out)
    q = [x["metrics"]["quality"] for x in ranked]
    assert q == sorted(q, reverse=True)
    table = cli("runs", "planted", "--where", "style=soft", "--sort", "quality")
    assert table.code == 0 and "quality" in table.out.splitlines()[0]
    bad = cli("runs", "planted", "--where", "qualty>3")
    assert bad.code == 2 and "no stored metric 'qualty'" in bad.err
    bad = cli("runs", "planted", "--sort", "speed")
    assert bad.code == 2 and "sortable: quality, seconds" in bad.err


def test_metrics_and_effects_on_postgresql(pg_url):
    runs = fill_store(pg_url)
    with Store.open(pg_url) as store:
        values = storage.values(store, "planted")
        assert len(values) == len(runs) and all(isinstance(v["quality"], float) for v in values.values())
        storage.save(store, "planted", [runs[0].key], Scores("quality", "2", True, {"quality": [float("nan")]}))
        assert storage.values(store, "planted")[runs[0].key] == {"quality": None}
        assert storage.names(store, "planted")["quality"]["versions"] == ["1", "2"]
        bold = by_label(storage.effects(store, "planted", "quality", axes=["style"]), "style")["bold"]
    assert bold.low > 0


ONE_SEED = """
name: oneseed
model: tiny
prompt: "a {{ style }} cat"
axes:
  style: [plain, bold, broken]
seeds: [0]
"""


def test_one_seed_gives_no_interval_and_a_label_whose_runs_all_failed_is_listed(tmp_path, cli):
    """One seed: each label has one pair with the baseline, and a bootstrap over one difference is that difference
    (an "interval" of zero width that excluded 0: "significant" from one pair). Below MIN_PAIRS pairs there is no
    interval, and a note says why. A label whose runs all failed is listed with a note instead of vanishing."""
    url = f"sqlite:///{tmp_path / 'home' / 'tracker.db'}"
    runs = plan.expand(spec.parse(ONE_SEED, "oneseed.yaml")).runs
    by_style = {dict(r.axes)["style"]: r for r in runs}
    with Store.open(url) as store:
        sweep = store.start_sweep("oneseed", {"planned": len(runs)})
        store.save_experiment("oneseed", "oneseed.yaml", ONE_SEED)
        store.plan_runs(sweep, runs)
        for style in ("plain", "bold"):
            store.mark_done("oneseed", by_style[style].key)
        store.mark_failed("oneseed", by_style["broken"].key, "out of memory")
        storage.save(store, "oneseed", [by_style["plain"].key, by_style["bold"].key],
                     Scores("quality", "1", True, {"quality": [1.0, 9.0]}))
        result = storage.effects(store, "oneseed", "quality")
    style = by_label(result, "style")
    bold = style["bold"]
    assert bold.pairs == 1 and bold.diff == 8.0 and bold.low is None and not bold.excludes_zero
    assert bold.note == "too few pairs (n=1) for an interval"
    assert style["broken"].runs == 0 and style["broken"].note == "all 1 runs failed"
    text = cli("effects", "oneseed", "--metric", "quality")
    assert text.code == 0, text.err
    assert "too few pairs (n=1) for an interval" in text.out and "*" not in text.out.split("\n\n")[0]
    assert any(line.startswith("broken") and "all 1 runs failed" in line for line in text.out.splitlines())
    assert fx.MIN_PAIRS >= 3
    rep = cli("report", "oneseed", "-o", tmp_path / "rep")  # the report's effects say the same
    assert rep.code == 0, rep.err
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "too few pairs (n=1) for an interval" in html and "all 1 runs failed" in html


def test_an_interval_needs_min_pairs():
    obs = [fx.Observation({"style": s, "seed": str(seed)}, 1.0 + (s == "b") + seed / 10) for s in "ab"
           for seed in range(fx.MIN_PAIRS)]
    enough = by_label(fx.analyze(obs, "m"), "style")["b"]
    assert enough.pairs == fx.MIN_PAIRS and enough.low is not None and enough.note is None
    fewer = by_label(fx.analyze([o for o in obs if o.axes["seed"] != "0"], "m"), "style")["b"]
    assert fewer.pairs == fx.MIN_PAIRS - 1 and fewer.low is None and "too few pairs" in fewer.note
