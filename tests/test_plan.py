"""Expansion: exact plans for the examples, and properties that hold for any experiment."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import yaml
from hypothesis import given, settings, strategies as st

from tracker.experiment import families, model_refs, plan, parse as spec
from tracker.experiment.settings import Settings
from tracker.experiment.plan import expand

from conftest import EXAMPLES, REPO

TRIBAL = (", tribal panther make up, blue on red, side profile, looking away, serious eyes 50mm portrait "
          "photography, hard rim lighting photography--beta --ar 2:3  --beta --upbeta")


def test_warrior_chief_plan_is_exact():
    p = expand(spec.parse_file(EXAMPLES / "warrior-chief.yaml"))
    assert len(p.runs) == 32
    ages = {"oldest": "the oldest", "old": "a old", "plain": "a", "young": "a young"}
    expected = [(age, style, seed) for age in ages for style in ("plain", "tribal") for seed in (0, 1, 2, 3)]
    assert [(r.labels["age"], r.labels["style"], r.seed) for r in p.runs] == expected
    for r in p.runs:
        suffix = TRIBAL if r.labels["style"] == "tribal" else ""
        assert r.prompt == f"portrait photo of {ages[r.labels['age']]} warrior chief{suffix}"
        assert r.negative_prompt == "blurry, low quality"
        s = r.settings
        assert (s.model, s.scheduler, s.steps, s.guidance_scale, s.dtype, s.vae) == (
            "tiny", "DPMSolverMultistepScheduler", 20, 7.5, "float32", "default")
        assert (s.width, s.height) == families.facts_for("tiny").native_size
    assert [r.index for r in p.runs] == list(range(32))
    assert len({r.key for r in p.runs}) == 32
    # keys are stable across machines and releases: pinned
    assert p.runs[0].key == plan.run_key(p.runs[0].settings, 0, "portrait photo of the oldest warrior chief",
                                         "blurry, low quality")
    assert p.experiment.grid == ("age", "seed")


def test_efficient_diffusion_plan_is_exact():
    p = expand(spec.parse_file(EXAMPLES / "efficient-diffusion.yaml"))
    combos = {(r.labels["setup"], r.labels["memory"]) for r in p.runs}
    assert combos == {("fp32-pndm50", "batch1"), ("fp16-pndm50", "batch1"), ("fp16-dpm20", "batch1"),
                      ("fp16-dpm20", "batch4"), ("fp16-dpm20", "batch8-sliced")}
    assert len(p.runs) == 5 * 8
    by = {(r.labels["setup"], r.labels["memory"], r.seed): r.settings for r in p.runs}
    s = by[("fp32-pndm50", "batch1", 0)]
    assert (s.dtype, s.scheduler, s.steps, s.batch_size, s.attention_slicing) == ("float32", "PNDMScheduler", 50, 1, False)
    s = by[("fp16-dpm20", "batch8-sliced", 7)]
    assert (s.dtype, s.scheduler, s.steps, s.batch_size, s.attention_slicing) == (
        "float16", "DPMSolverMultistepScheduler", 20, 8, True)
    # batch size and slicing are axes here, so they join the key: the same image measured three ways
    assert len({r.key for r in p.runs}) == 40


def test_issue_example_with_zip_exclude_and_bundles():
    text = """
    name: warrior-chief
    model: tiny
    prompt: "portrait photo of {{ age }} warrior chief{{ style }}"
    negative_prompt: "{{ negative }}"
    axes:
      age: {oldest: "the oldest", old: "a old", plain: "a", young: "a young"}
      style: ["", ", tribal panther make up"]
      negative: {none: "", lowq: "blurry, low quality"}
    seeds: [0, 1, 2, 3]
    scheduler: [PNDM, DPMSolverMultistep]
    steps: [50, 20]
    zip: [[scheduler, steps]]
    guidance_scale: 7.5
    size: 512x512
    vae: default
    dtype: float16
    attention_slicing: false
    batch_size: auto
    grid: {rows: age, cols: seed}
    exclude: [{scheduler: PNDM, negative: lowq}]
    """
    p = expand(spec.parse(text, "x.yaml"))
    assert len(p.runs) == 4 * 2 * 2 * 2 * 4 - 4 * 2 * 1 * 1 * 4
    pairs = {(r.settings.scheduler, r.settings.steps) for r in p.runs}
    assert pairs == {("PNDMScheduler", 50), ("DPMSolverMultistepScheduler", 20)}
    assert not any(r.settings.scheduler == "PNDMScheduler" and r.labels["negative"] == "lowq" for r in p.runs)
    assert {r.labels["style"] for r in p.runs} == {"(empty)", ", tribal panther make up"}
    assert all((r.settings.width, r.settings.height, r.settings.dtype) == (512, 512, "float16") for r in p.runs)


def test_prompt_mapping_becomes_an_axis_and_aliases_share_keys():
    text = """
    prompt: {short: "a {{ c }} cat", long: "a photo of a {{ c }} cat, detailed"}
    axes: {c: [red, blue]}
    scheduler: ["DPM++ 2M", DPMSolverMultistepScheduler, "DPM++ 2M Karras"]
    """
    p = expand(spec.parse(text, "x.yaml"))
    assert p.experiment.axis_names == ("prompt", "c", "scheduler", "seed")
    assert p.combinations == 12
    # "DPM++ 2M" and the class name are the same pipeline: one run each, so 8 distinct runs
    assert len(p.runs) == 8
    karras = [r for r in p.runs if r.labels["scheduler"] == "DPM++ 2M Karras"]
    assert karras and all(dict(r.settings.scheduler_options) == {"use_karras_sigmas": True} for r in karras)
    assert {r.prompt for r in p.runs if r.labels["prompt"] == "long"} == {"a photo of a red cat, detailed",
                                                                           "a photo of a blue cat, detailed"}



def test_scheduler_is_resolved_when_parsed_and_its_alias_options_stay_with_it():
    text = """
    prompt: a cat
    scheduler: DPM++ 2M Karras
    scheduler_options: {solver_order: 3}
    axes:
      s:
        euler: {scheduler: Euler}
        same: {steps: 4}
        mine: {scheduler: DPM++ 2M, scheduler_options: {use_karras_sigmas: false}}
    """
    exp = spec.parse(text, "x.yaml")
    # resolved once, by the file's parser: the class name and what the A1111 name implies
    assert (exp.scheduler.class_name, exp.scheduler.options) == ("DPMSolverMultistepScheduler",
                                                                 (("use_karras_sigmas", True),))
    assert exp.settings.scheduler == "DPMSolverMultistepScheduler"
    bundles = {v.label: dict(v.settings) for v in exp.axes[0].values}
    assert bundles["euler"]["scheduler"].class_name == "EulerDiscreteScheduler"
    by = {r.labels["s"]: r.settings for r in expand(exp).runs}
    # the base name's Karras option does not follow the base into another scheduler; the user's options do
    assert (by["euler"].scheduler, by["euler"].options()) == ("EulerDiscreteScheduler", {"solver_order": 3})
    assert by["same"].options() == {"solver_order": 3, "use_karras_sigmas": True}
    assert by["same"].scheduler_choice.label() == "DPM++ 2M Karras"
    # the user's own options win over the ones a name implies
    assert by["mine"].options() == {"solver_order": 3, "use_karras_sigmas": False}
    assert by["mine"].scheduler_choice.label() == "DPM++ 2M"

def test_seed_forms():
    def seeds(value):
        return [r.seed for r in expand(spec.parse(f"prompt: hi\nseeds: {value}\n", "x.yaml")).runs]
    assert seeds("[3, 1]") == [3, 1]
    assert seeds("'0-7'") == list(range(8))
    assert seeds("{start: 10, count: 3}") == [10, 11, 12]
    assert seeds(str(2**63 - 1)) == [2**63 - 1]


def test_from_key_takes_seed_and_unset_settings():
    exp = spec.parse("prompt: '{{ v }}'\naxes: {v: [a, b]}\nsteps: 9\nseeds: {from: abc}\n", "x.yaml")
    assert exp.seeds_from == "abc"
    base = Settings(model="tiny", scheduler="DDIMScheduler", steps=30, guidance_scale=3.0, width=32, height=32).to_dict()
    p = expand(spec.with_base_run(exp, 42, base))
    assert [r.seed for r in p.runs] == [42, 42]
    assert all((r.settings.scheduler, r.settings.steps, r.settings.guidance_scale, r.settings.width) ==
               ("DDIMScheduler", 9, 3.0, 32) for r in p.runs)


def test_expand_json_fields(cli):
    res = cli("expand", EXAMPLES / "warrior-chief.yaml", "--json")
    assert res.code == 0, res.err
    runs = json.loads(res.out)
    assert len(runs) == 32
    for field in ("key", "prompt", "negative_prompt", "axes", "seed", "model", "scheduler", "steps",
                  "guidance_scale", "width", "height", "vae", "dtype"):
        assert field in runs[0]
    assert runs[5]["axes"] == {"age": "oldest", "style": "tribal", "seed": "1"}


def test_expand_table_shows_totals_and_axes(cli):
    res = cli("expand", EXAMPLES / "warrior-chief.yaml")
    assert res.code == 0
    assert res.out.splitlines()[0] == "warrior-chief: 32 runs"
    assert "  age (4): oldest=8, old=8, plain=8, young=8" in res.out
    assert "portrait photo of a young warrior chief" in res.out


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys\nfrom tracker.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'diffusers', 'mlflow', 'transformers', 'sqlalchemy', 'alembic') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "HEAVY []" in out
    assert "expand" in out and "run" in out


# --- properties ------------------------------------------------------------------------------------

labels = st.text(alphabet="abcdefghij", min_size=1, max_size=4)


@st.composite
def experiments(draw):
    n_axes = draw(st.integers(1, 3))
    axes = {}
    for i in range(n_axes):
        axes[f"a{i}"] = draw(st.lists(labels, min_size=1, max_size=4, unique=True))
    steps = draw(st.lists(st.integers(1, 60), min_size=1, max_size=3, unique=True))
    seeds = draw(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=3, unique=True))
    doc = {"prompt": " ".join("{{ %s }}" % n for n in axes), "axes": axes, "seeds": seeds,
           "steps": steps if len(steps) > 1 else steps[0]}
    names = list(axes) + (["steps"] if len(steps) > 1 else []) + ["seed"]
    sizes = {**{n: len(v) for n, v in axes.items()}, "steps": len(steps), "seed": len(seeds)}
    same = [n for n in names if sizes[n] == sizes[names[0]] and n != names[0]]
    if same and draw(st.booleans()):
        doc["zip"] = [[names[0], same[0]]]
    if draw(st.booleans()):
        name = draw(st.sampled_from(list(axes)))
        doc["exclude"] = [{name: draw(st.sampled_from(axes[name]))}]
    return doc, seeds, steps


def _expected_size(doc, seeds, steps):
    values = {**{n: list(v) for n, v in doc["axes"].items()}, "steps": steps, "seed": seeds}
    names = list(doc["axes"]) + (["steps"] if len(steps) > 1 else []) + ["seed"]
    zipped = doc.get("zip", [[]])[0]
    groups = [[n] for n in names if n not in zipped] + ([zipped] if zipped else [])
    count = 0
    for choice in itertools.product(*(range(len(values[g[0]])) for g in groups)):
        picked = {n: values[n][i] for g, i in zip(groups, choice) for n in g}
        if any(all(str(picked[k]) == str(v) for k, v in rule.items()) for rule in doc.get("exclude", [])):
            continue
        count += 1
    bound = math.prod(len(values[g[0]]) for g in groups)
    return count, bound


@settings(max_examples=60, deadline=None)
@given(experiments())
def test_plan_size_is_product_after_zip_and_exclude(case):
    doc, seeds, steps = case
    p = expand(spec.parse(yaml.safe_dump(doc), "x.yaml"))
    count, bound = _expected_size(doc, seeds, steps)
    assert len(p.runs) == count
    assert plan.size(p.experiment) == bound


@settings(max_examples=40, deadline=None)
@given(experiments())
def test_keys_are_stable_and_unique(case):
    doc, _, _ = case
    text = yaml.safe_dump(doc)
    a = expand(spec.parse(text, "x.yaml"))
    b = expand(spec.parse(text, "other-name.yaml"))
    assert [r.key for r in a.runs] == [r.key for r in b.runs]
    assert len({r.key for r in a.runs}) == len(a.runs)
    # declaring the axes in another order changes the plan's order, never its keys
    doc2 = {**doc, "axes": dict(reversed(list(doc["axes"].items())))}
    c = expand(spec.parse(yaml.safe_dump(doc2), "x.yaml"))
    assert {r.key for r in c.runs} == {r.key for r in a.runs}


def test_yaml_surrogate_pairs_become_one_character_and_digit_keys_are_text():
    exp = spec.parse('prompt: "a \\ud83d\\udc09 dragon"\nseeds: {from: 123456}\n', "x.yaml")
    assert exp.prompt == "a \U0001F409 dragon"
    assert exp.seeds_from == "123456"
    p = expand(spec.with_base_run(exp, 7, {}))
    assert p.runs[0].prompt == "a \U0001F409 dragon" and p.runs[0].seed == 7


def test_native_size_follows_each_runs_model():
    """Without a size, every run takes its own model's native size, also when the model is an axis."""
    p = expand(spec.parse("prompt: hi\nmodel: [tiny, shapes]\n", "x.yaml"))
    sizes = {r.settings.model: (r.settings.width, r.settings.height) for r in p.runs}
    assert sizes == {"tiny": families.facts_for("tiny").native_size, "shapes": families.facts_for("shapes").native_size}
    assert sizes["tiny"] != sizes["shapes"]
    p = expand(spec.parse("prompt: hi\nmodel: shapes\nwidth: 128\n", "x.yaml"))
    assert (p.runs[0].settings.width, p.runs[0].settings.height) == (128, families.facts_for("shapes").native_size[1])
