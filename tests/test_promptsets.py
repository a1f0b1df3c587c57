"""Prompt sets (``prompts: {file, column, label, where, sample, seed}``) expand into the expected runs and categories;
``tracker effects --by category`` and the report's suite result find an effect planted in one category only."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from tracker import limits
from tracker.errors import SpecError
from tracker.experiment import parse as spec
from tracker.experiment import plan
from tracker.metrics import Scores, storage, suite
from tracker.metrics import effects as fx
from tracker.store.runstore import Store

PARTI = textwrap.dedent("""\
    Prompt\tCategory\tChallenge\tNote
    a red cube on a table\tArtifacts\tBasic\t
    a cat {{ wearing }} a hat\tAnimals\tBasic\tJinja-looking text stays literal
    a dog reading a newspaper\tAnimals\tComplex\t
    two dogs {playing|sleeping}\tAnimals\tBasic\tDynamic Prompts syntax stays literal too
    a lighthouse at dusk\tOutdoor Scenes\tBasic\t
    a crowded market street\tOutdoor Scenes\tFine-grained Detail\t
    the Eiffel tower, watercolour\tArts\tBasic\t
    a bowl of fruit\tArtifacts\tBasic\t
    """)


def experiment(tmp_path, prompts: str, extra: str = "steps: [2, 3]\nseeds: [0, 1]\n", name="suite") -> spec.ExperimentSpec:
    (tmp_path / "sets").mkdir(exist_ok=True)
    (tmp_path / "sets" / "parti.tsv").write_text(PARTI)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: tiny\nsize: 64x64\nprompts: {prompts}\n{extra}")
    return spec.parse_file(path)


def test_a_tsv_prompt_set_expands_into_prompts_categories_and_runs(tmp_path):
    exp = experiment(tmp_path, "{file: sets/parti.tsv, column: Prompt, label: Category, where: {Challenge: Basic}}")
    assert [(a.name, a.kind) for a in exp.axes] == [("prompt", "prompt"), ("category", "label"), ("steps", "setting"),
                                                    ("seed", "seed")]
    p = plan.expand(exp)
    assert len(p.runs) == 6 * 2 * 2  # 6 basic prompts x 2 steps x 2 seeds: category is no factor of the product
    by_prompt = {r.prompt: dict(r.axes)["category"] for r in p.runs}
    assert by_prompt == {"a red cube on a table": "Artifacts", "a cat {{ wearing }} a hat": "Animals",
                         "two dogs {playing|sleeping}": "Animals", "a lighthouse at dusk": "Outdoor Scenes",
                         "the Eiffel tower, watercolour": "Arts", "a bowl of fruit": "Artifacts"}
    assert p.labels_per_axis()["category"] == {"Artifacts": 8, "Animals": 8, "Outdoor Scenes": 4, "Arts": 4}
    assert p.runs[0].axes == (("prompt", "a red cube on a table"), ("category", "Artifacts"), ("steps", "2"),
                              ("seed", "0"))


def test_sample_is_seeded_and_keeps_file_order(tmp_path):
    a = plan.expand(experiment(tmp_path, "{file: sets/parti.tsv, label: Category, sample: 3, seed: 1}"))
    b = plan.expand(experiment(tmp_path, "{file: sets/parti.tsv, label: Category, sample: 3, seed: 1}"))
    c = plan.expand(experiment(tmp_path, "{file: sets/parti.tsv, label: Category, sample: 3, seed: 2}"))
    prompts = list(dict.fromkeys(r.prompt for r in a.runs))
    assert len(prompts) == 3 and prompts == list(dict.fromkeys(r.prompt for r in b.runs))
    order = [line.split("\t")[0] for line in PARTI.splitlines()[1:]]
    assert prompts == sorted(prompts, key=order.index)
    assert set(prompts) != set(dict.fromkeys(r.prompt for r in c.runs))


@pytest.mark.parametrize("name,body,options", [
    ("set.csv", 'text,skill\n"a red, round ball",colour\na blue cube,colour\ntwo cats,numeracy\n', "column: text, label: skill"),
    ("set.jsonl", '{"prompt": "a red, round ball", "skill": "colour"}\n\n{"prompt": "a blue cube", "skill": "colour"}\n'
                  '{"prompt": "two cats", "skill": "numeracy"}\n', "label: skill"),
])
def test_csv_and_jsonl_prompt_sets(tmp_path, name, body, options):
    (tmp_path / name).write_text(body)
    exp = experiment(tmp_path, f"{{file: {name}, {options}}}")
    runs = plan.expand(exp).runs
    assert {r.prompt: dict(r.axes)["category"] for r in runs} == {
        "a red, round ball": "colour", "a blue cube": "colour", "two cats": "numeracy"}


def test_plain_lines_prompt_set_has_no_category(tmp_path):
    (tmp_path / "drawbench.txt").write_text("# DrawBench-style, one prompt a line\na red cube\n\na green sphere\n")
    exp = experiment(tmp_path, "drawbench.txt", extra="seeds: [0]\n")
    assert [a.name for a in exp.axes] == ["prompt", "seed"]
    assert [r.prompt for r in plan.expand(exp).runs] == ["a red cube", "a green sphere"]


@pytest.mark.parametrize("prompts,field,words", [
    ("{file: sets/nope.tsv}", "prompts.file", "no such file sets/nope.tsv"),
    ("{file: sets/parti.tsv, column: Text}", "prompts.column", "no column 'Text'; its columns: Prompt, Category"),
    ("{file: sets/parti.tsv, label: Kind}", "prompts.label", "no column 'Kind'"),
    ("{file: sets/parti.tsv, where: {Level: Basic}}", "prompts.where.Level", "no column 'Level'"),
    ("{file: sets/parti.tsv, where: {Challenge: Hard}}", "prompts.where", "no row of sets/parti.tsv matches"),
    ("{file: sets/parti.tsv, sample: 0}", "prompts.sample", "must be a positive integer but is 0"),
    ("{file: sets/parti.tsv, shuffle: true}", "prompts.shuffle", "unknown field 'shuffle'"),
    ("[a, b]", "prompts", "must be a file name or a mapping"),
])
def test_bad_prompt_sets_are_one_line_naming_file_field_and_value(tmp_path, prompts, field, words):
    with pytest.raises(SpecError) as err:
        experiment(tmp_path, prompts)
    text = str(err.value)
    assert "\n" not in text and f"suite.yaml: {field}" in text and words in text


def test_prompt_and_prompts_together_and_limits(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="give either prompt or prompts"):
        experiment(tmp_path, "sets/parti.tsv", extra='prompt: "x"\n')
    monkeypatch.setattr(limits, "PROMPT_SET_MAX_ROWS", 5)
    with pytest.raises(SpecError, match="more than 5 rows"):
        experiment(tmp_path, "sets/parti.tsv")
    monkeypatch.setattr(limits, "PROMPT_SET_MAX_BYTES", 100)
    with pytest.raises(SpecError, match=r"is \d+ bytes; a prompt file may hold at most 100"):
        experiment(tmp_path, "sets/parti.tsv")
    monkeypatch.setattr(limits, "MAX_PROMPT_CHARS", 20)
    monkeypatch.setattr(limits, "PROMPT_SET_MAX_BYTES", 10_000)
    monkeypatch.setattr(limits, "PROMPT_SET_MAX_ROWS", 100)
    with pytest.raises(SpecError, match="sets/parti.tsv line 2: the prompt is 21 characters long; at most 20"):
        experiment(tmp_path, "sets/parti.tsv")


# --- effects per category on a store with a planted effect -------------------------------------------------------

def planted(run) -> float:
    """Per-prompt level and per-(prompt, seed) noise shared by both schedulers (what pairing removes); steps 3 is
    +4 better on Animals only."""
    a = dict(run.axes)
    level = np.random.default_rng([len(run.prompt), 1]).normal(20, 5)
    shared = np.random.default_rng([len(run.prompt), run.seed, 2]).normal(0, 2)
    own = np.random.default_rng([len(run.prompt), run.seed, int(a["steps"]), 3]).normal(0, 0.3)
    return level + shared + own + (4.0 if a["category"] == "Animals" and a["steps"] == "3" else 0.0)


@pytest.fixture
def store_url(tmp_path):
    exp = experiment(tmp_path, "{file: sets/parti.tsv, label: Category}", extra="steps: [2, 3]\nseeds: \"0-5\"\n")
    runs = plan.expand(exp).runs
    url = f"sqlite:///{tmp_path / 'home' / 'tracker.db'}"
    with Store.open(url) as store:
        sweep = store.start_sweep("suite", {"planned": len(runs)})
        store.save_experiment("suite", exp.path, exp.source)
        store.plan_runs(sweep, runs)
        for r in runs:
            store.mark_done("suite", r.key, seconds=1.0)
        storage.save(store, "suite", [r.key for r in runs],
                     Scores("pickscore", "1", True, {"pickscore": [planted(r) for r in runs]}))
    return url


def test_effects_by_category_find_the_planted_effect_where_it_is(store_url):
    with Store.open(store_url) as store:
        groups = dict(storage.effects(store, "suite", "pickscore", by="category"))
    assert list(groups) == ["all", "Artifacts", "Animals", "Outdoor Scenes", "Arts"]
    for name, result in groups.items():
        assert [ax.axis for ax in result.axes] == ["steps"]  # prompt and category pair runs, they are no effect
    animals = groups["Animals"].axes[0].labels[1]
    assert animals.label == "3" and animals.pairs == 3 * 6  # paired over the category's prompts and the seeds
    assert 3.5 < animals.diff < 4.5 and animals.excludes_zero
    for other in ("Artifacts", "Outdoor Scenes", "Arts"):
        e = groups[other].axes[0].labels[1]
        assert abs(e.diff) < 0.5 and not e.excludes_zero
    overall = groups["all"].axes[0].labels[1]
    assert overall.pairs == 8 * 6 and overall.diff == pytest.approx(4.0 * 3 / 8, abs=0.2)


def test_effects_by_category_cli(store_url, cli):
    r = cli("effects", "suite", "--metric", "pickscore", "--by", "category")
    assert r.code == 0, r.err
    assert "== category = Animals ==" in r.out and "steps (baseline 2; pickscore" in r.out
    j = cli("effects", "suite", "--metric", "pickscore", "--by", "category", "--json")
    data = json.loads(j.out)
    assert [g["category"] for g in data["groups"]] == ["all", "Artifacts", "Animals", "Outdoor Scenes", "Arts"]
    bad = cli("effects", "suite", "--metric", "pickscore", "--by", "mood")
    assert bad.code == 2 and "--by 'mood': no such axis" in bad.err


def test_suite_result_lists_categories_and_the_prompts_that_differ_most(store_url):
    with Store.open(store_url) as store:
        vals = storage.values(store, "suite")
        runs = store.runs("suite", status="done")
    obs = [fx.Observation(dict(r.axes), vals[r.key]["pickscore"]) for r in runs]
    texts = {dict(r.axes)["prompt"]: r.prompt for r in runs}
    result = suite.suite_result(obs, texts, "pickscore")
    assert result.axis == "steps" and [g for g, _ in result.groups][:3] == ["all", "Artifacts", "Animals"]
    assert {p.group for p in result.prompts[:3]} == {"Animals"}  # the 3 animal prompts carry the planted +4
    assert result.prompts[0].spread > 3 and dict(result.prompts[0].means).keys() == {"2", "3"}


def test_the_report_shows_the_suite_result_first(store_url, cli, tmp_path):
    r = cli("report", "suite")
    assert r.code == 0, r.err
    page = (tmp_path / "home" / "reports" / "suite" / "index.html").read_text()
    assert page.index('id="suite"') < page.index('id="effects"')
    section = page[page.index('id="suite"'):page.index("</section>", page.index('id="suite"'))]
    assert 'data-group="Animals"' in section and "Prompts where the steps labels differ most" in section
    assert section.count('class="sure"') >= 1 and "two dogs {playing|sleeping}" in section
