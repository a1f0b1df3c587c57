"""Ratings in the run store (migration 0012), their export, their metrics in effects and MLflow, and the
Bradley-Terry strengths of pairwise judgements."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

from tracker.errors import UsageError
from tracker.metrics import bradley_terry as bt
from tracker.metrics import ratings
from tracker.store.runstore import Store

EXP = """
name: rated
model: shapes
prompt: "a {{ colour }} circle on white"
axes:
  colour: [red, green, blue]
seeds: [0, 1, 2]
scheduler: DPMSolverMultistep
steps: 6
"""


# -- Bradley-Terry on synthetic judgements -----------------------------------------------------------------

def synthetic(true: dict[str, float], per_pair: int, seeds: int, rng: random.Random) -> list[bt.Judgement]:
    labels = list(true)
    out = []
    for s in range(seeds):
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                for _ in range(per_pair):
                    pa = 1 / (1 + pow(2.718281828, true[b] - true[a]))
                    out.append(bt.Judgement(a, b, 1.0 if rng.random() < pa else 0.0, s))
    return out


def test_bradley_terry_recovers_a_known_order():
    true = {"worst": -1.5, "poor": -0.5, "good": 0.5, "best": 1.5}
    js = synthetic(true, per_pair=3, seeds=12, rng=random.Random(7))
    s = bt.strengths(js, list(true), resamples=200)
    assert s.ordered
    assert [x.label for x in s.labels] == ["best", "good", "poor", "worst"]
    for x in s.labels:
        assert x.low <= x.strength <= x.high
    best, worst = s.labels[0], s.labels[-1]
    assert best.low > worst.high  # far apart labels: intervals do not overlap
    assert abs(sum(x.strength for x in s.labels)) < 1e-6  # centred on the mean label


def test_bradley_terry_says_when_judgements_are_too_few():
    js = [bt.Judgement("a", "b", 1.0, 0), bt.Judgement("b", "c", 1.0, 1)]
    s = bt.strengths(js, ["a", "b", "c"])
    assert not s.ordered and all(x.strength is None for x in s.labels)
    assert "too few judgements" in s.note and "a (1)" in s.note
    assert s.next_pairs  # what to judge next
    # labels never compared with the rest: no order either, however many judgements
    js = [bt.Judgement("a", "b", 1.0, i) for i in range(5)] + [bt.Judgement("c", "d", 0.0, i) for i in range(5)]
    s = bt.strengths(js, ["a", "b", "c", "d"])
    assert not s.ordered and "not all compared" in s.note


def test_bradley_terry_is_finite_when_one_label_always_wins():
    js = [bt.Judgement("a", "b", 1.0, i) for i in range(6)]
    theta = bt.fit(js, ["a", "b"])
    assert 0 < theta["a"] < 10 and theta["b"] == pytest.approx(-theta["a"])


# -- ratings in the store -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rated_home(tmp_path_factory):
    from tracker.cli import main

    home = tmp_path_factory.mktemp("rated")
    f = home / "rated.yaml"
    f.write_text(EXP)
    with pytest.raises(SystemExit) as e:
        main(["--home", str(home / "ws"), "run", str(f), "-q"])
    assert e.value.code == 0
    return home / "ws"


@pytest.mark.slow
def test_scores_thumbs_and_pairs_are_stored_exported_and_feed_effects_and_mlflow(rated_home, cli):
    url = f"sqlite:///{rated_home / 'tracker.db'}"
    with Store.open(url) as store:
        runs = {(r.axes["colour"], r.seed): r for r in store.runs("rated")}
        # scores: green is rated higher than red on every seed
        for seed in range(3):
            ratings.add(store, "rated", runs[("red", seed)].key, "score", 2, "ann")
            ratings.add(store, "rated", runs[("green", seed)].key, "score", 4, "ann", "nice <b>green</b>")
            ratings.add(store, "rated", runs[("green", seed)].key, "score", 5, "bob")
            ratings.add(store, "rated", runs[("blue", seed)].key, "thumb", 1, "ann")
            ratings.add(store, "rated", runs[("green", seed)].key, "pair", 1, "ann",
                        other_key=runs[("red", seed)].key)
        with pytest.raises(UsageError, match="different seeds"):
            ratings.add(store, "rated", runs[("green", 0)].key, "pair", 1, "ann", other_key=runs[("red", 1)].key)
        with pytest.raises(UsageError, match="score value 7"):
            ratings.add(store, "rated", runs[("green", 0)].key, "score", 7, "ann")
        with pytest.raises(UsageError, match="rater"):
            ratings.add(store, "rated", runs[("green", 0)].key, "score", 3, "  ")
        from tracker.metrics import storage

        values = storage.values(store, "rated")
    assert values[runs[("green", 0)].key]["rating"] == 4.5  # the mean of both raters' scores
    assert values[runs[("red", 1)].key]["rating"] == 2.0
    assert values[runs[("blue", 2)].key]["thumbs"] == 1.0

    home = ["--home", str(rated_home)]
    res = cli(*home, "ratings", "rated", "--csv")
    assert res.code == 0, res.err
    rows = list(csv.DictReader(io.StringIO(res.out)))
    assert len(rows) == 15 and {r["kind"] for r in rows} == {"score", "thumb", "pair"}
    assert any(r["comment"] == "nice <b>green</b>" for r in rows)
    res = cli(*home, "ratings", "rated", "--json")
    data = json.loads(res.out)
    assert len(data["ratings"]) == 15
    assert data["strengths"]["colour"]["ordered"] is False  # 3 judgements between two labels; blue none
    res = cli(*home, "ratings", "rated")
    assert "15 judgements" in res.out and "too few judgements" in res.out

    res = cli(*home, "effects", "rated", "--metric", "rating", "--json")
    assert res.code == 0, res.err
    fx = json.loads(res.out)
    [axis] = [a for a in fx["axes"] if a["axis"] == "colour"]
    green = next(e for e in axis["labels"] if e["label"] == "green")
    assert axis["baseline"] == "red" and green["pairs"] == 3 and green["diff"] == pytest.approx(2.5)

    # the report shows them as metric badges
    res = cli(*home, "report", "rated")
    assert res.code == 0, res.err
    html = (rated_home / "reports" / "rated" / "index.html").read_text()
    assert "rating = 4.5 (higher is better" in html

    # MLflow: the sweep logged each run; the ratings reach the child runs through sync
    res = cli(*home, "sync", "rated")
    assert res.code == 0, res.err
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{rated_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rated")
    logged = {r.data.tags.get("tracker.key"): r.data.metrics for r in client.search_runs([exp.experiment_id])}
    assert logged[runs[("green", 0)].key]["rating"] == 4.5
    assert logged[runs[("blue", 0)].key]["thumbs"] == 1.0
    # and the sweep's parent run has the summary of its runs' judgements
    [parent] = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("tracker.kind") == "sweep"]
    summary = parent.data.metrics
    assert summary["ratings.scores"] == 9 and summary["ratings.score_mean"] == pytest.approx((2 + 4 + 5) / 3)
    assert summary["ratings.thumbs"] == 3 and summary["ratings.thumbs_up_share"] == 1.0
    assert summary["ratings.pairs"] == 3


@pytest.mark.slow
def test_ratings_on_postgresql(cli, write_yaml, pg_url):
    path = write_yaml(EXP.replace("seeds: [0, 1, 2]", "seeds: [0]").replace("steps: 6", "steps: 2"))
    res = cli("--db", pg_url, "run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.err
    with Store.open(pg_url, create=False) as store:
        runs = {r.axes["colour"]: r for r in store.runs("rated")}
        ratings.add(store, "rated", runs["red"].key, "score", 5, "ann", "<b>ok</b>")
        ratings.add(store, "rated", runs["blue"].key, "pair", 0.5, "ann", other_key=runs["red"].key)
        rows = ratings.list_ratings(store, "rated")
        from tracker.metrics import storage

        assert storage.values(store, "rated")[runs["red"].key]["rating"] == 5.0
    assert [(r.kind, r.value, r.comment) for r in rows] == [("score", 5.0, "<b>ok</b>"), ("pair", 0.5, None)]
    assert rows[1].other_key == runs["red"].key
    res = cli("--db", pg_url, "ratings", "rated", "--json")
    assert res.code == 0 and len(json.loads(res.out)["ratings"]) == 2
