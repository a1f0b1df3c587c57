"""Dynamic Prompts variants and wildcard files in templates: expansion, labels, errors, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, run_tracker
from test_spec_errors import assert_one_line_error
from tracker.experiment import plan, parse as spec

AGES = "portrait photo of {the oldest|a old|a|a young} warrior chief"


def _plan(text: str, path: str = "exp.yaml", base_dir=None):
    return plan.expand(spec.parse(textwrap.dedent(text), path, base_dir=base_dir))


def _labels(p, axis="variant"):
    return list(p.labels_per_axis()[axis])


def test_combinatorial_expansion_labels_each_variant_by_its_chosen_words():
    p = _plan(f"name: v\nprompt: '{AGES}'\nseeds: [1, 2]\n")
    assert _labels(p) == ["the oldest", "a old", "a", "a young"]
    assert len(p.runs) == 8
    by_label = {r.labels["variant"]: r.prompt for r in p.runs if r.seed == 1}
    assert by_label["a young"] == "portrait photo of a young warrior chief"
    assert by_label["the oldest"] == "portrait photo of the oldest warrior chief"
    assert len({r.key for r in p.runs}) == 8


def test_several_variant_groups_multiply_and_combinations_read_as_joined_words():
    p = _plan("prompt: 'a {red|blue} car, {2$$big|fast|old}'\n")
    assert len(p.runs) == 2 * 6  # {2$$...}: the library's combinatorial generator gives ordered pairs of three
    assert _labels(p)[0] == "red / big,fast"
    assert {r.prompt for r in p.runs} >= {"a red car, big,fast", "a blue car, fast,old"}


def test_sampled_variants_are_seeded_distinct_and_stable():
    text = "prompt: 'a {red|green|blue|pink|grey|gold} {car|boat|bike}'\nvariants: {sample: 5, seed: 3}\n"
    first, again = _plan(text), _plan(text)
    assert len(first.runs) == 5 and len(set(_labels(first))) == 5
    assert [r.key for r in first.runs] == [r.key for r in again.runs]
    other = _plan(text.replace("seed: 3", "seed: 4"))
    assert _labels(other) != _labels(first)


def test_variants_compose_with_jinja_axes_exclude_and_a_named_axis():
    p = _plan("""\
        prompt: "{{ who }} with {red|green} paint"
        variants: {axis: paint}
        axes:
          who: {chief: "a chief", child: "a child"}
        exclude: [{who: child, paint: green}]
        seeds: [0]
    """)
    assert [dict(r.axes) for r in p.runs] == [
        {"who": "chief", "paint": "red", "seed": "0"}, {"who": "chief", "paint": "green", "seed": "0"},
        {"who": "child", "paint": "red", "seed": "0"}]
    assert p.runs[2].prompt == "a child with red paint"


def test_jinja_renders_first_so_an_axis_value_may_hold_variant_syntax():
    p = _plan("""\
        prompt: "a chief{{ style }}"
        axes:
          style: {plain: "", painted: ", {blue|red} paint"}
    """)
    assert [(r.labels["style"], r.labels["variant"], r.prompt) for r in p.runs] == [
        ("plain", "(none)", "a chief"), ("painted", "blue", "a chief, blue paint"),
        ("painted", "red", "a chief, red paint")]


def test_negative_prompt_variants_are_their_own_axis():
    p = _plan("prompt: 'a {cat|dog}'\nnegative_prompt: '{blurry|}'\n")
    assert _labels(p, "negative_variant") == ["blurry", "(empty)"] and len(p.runs) == 4


def test_variants_off_reads_braces_as_text():
    p = _plan("prompt: 'a {red|green} car'\nvariants: off\n")
    assert [r.prompt for r in p.runs] == ["a {red|green} car"] and "variant" not in p.labels_per_axis()


def test_wildcard_files_nested_wildcards_and_the_environment_folder(tmp_path, monkeypatch):
    folder = tmp_path / "wild"
    folder.mkdir()
    (folder / "colours.txt").write_text("red\n# a comment\n__blues__\n")
    (folder / "blues.txt").write_text("navy\nsky {blue|grey}\n")
    (tmp_path / "exp.yaml").write_text("prompt: 'a __colours__ car'\nwildcards: wild\n")
    p = plan.expand(spec.parse_file(tmp_path / "exp.yaml"))
    assert sorted(r.prompt for r in p.runs) == ["a navy car", "a red car", "a sky blue car", "a sky grey car"]
    assert "sky blue" in _labels(p)
    monkeypatch.setenv("TRACKER_WILDCARDS", str(folder))
    (tmp_path / "env.yaml").write_text("prompt: 'a __blues__ boat'\n")
    assert len(plan.expand(spec.parse_file(tmp_path / "env.yaml")).runs) == 3


@pytest.mark.parametrize("name, text, needles", [
    ("missing", "prompt: 'a __nope__ car'\nwildcards: wild\n",
     ["exp.yaml: prompt (line 1)", "wildcard __nope__", "at character 3", "not found in"]),
    ("nested-missing", "prompt: 'a __outer__ car'\nwildcards: wild\n",
     ["exp.yaml: prompt", "wildcard __inner__", "inside a wildcard file"]),
    ("no-folder", "prompt: 'a __nope__ car'\n", ["wildcard __nope__", "TRACKER_WILDCARDS"]),
    ("bad-folder", "prompt: 'a __x__ car'\nwildcards: nowhere\n", ["exp.yaml: wildcards", "not a folder"]),
    ("bad-syntax", "prompt: 'a {red|green car'\n", ["exp.yaml: prompt (line 1)", "Dynamic Prompts syntax",
                                                    "at character 3"]),
    ("bad-sample", "prompt: 'a {b|c}'\nvariants: {sample: 0}\n", ["exp.yaml: variants.sample", "positive integer"]),
    ("axis-taken", "prompt: '{{ variant }} {b|c}'\naxes:\n  variant: [x]\n", ["axes.variant", "taken by the variants"]),
    ("too-many", "prompt: '" + "{a|b|c|d|e|f|g|h|i|j}" * 5 + "'\n", ["exp.yaml: prompt", "more than 10000"]),
    ("dot-dot", "prompt: 'a __../secret/s__ car'\nwildcards: wild\n",
     ["exp.yaml: prompt (line 1)", "wildcard __../secret/s__", "outside the wildcards folder"]),
    ("negative-axis", "prompt: 'a {red|blue} car'\nvariants: {axis: negative_variant}\n",
     ["exp.yaml: variants.axis", "'negative_variant'", "negative prompt"]),
])
def test_bad_variants_are_one_line_exit_2(cli, tmp_path, monkeypatch, name, text, needles):
    monkeypatch.delenv("TRACKER_WILDCARDS", raising=False)
    (tmp_path / "wild").mkdir()
    (tmp_path / "wild" / "outer.txt").write_text("__inner__\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "s.txt").write_text("hidden\n")
    (tmp_path / "exp.yaml").write_text(text)
    res = cli("expand", tmp_path / "exp.yaml")
    assert_one_line_error(res, *needles)


def test_the_plan_limit_counts_variants(cli, tmp_path):
    (tmp_path / "exp.yaml").write_text("prompt: '" + "{a|b|c|d|e|f|g|h|i|j}" * 3 + "'\nseeds: '0-10'\n")
    res = cli("expand", tmp_path / "exp.yaml")
    assert res.code == 2 and "11000 runs, more than the limit of 10000" in res.err


def test_expand_shows_the_variants(cli, tmp_path):
    (tmp_path / "exp.yaml").write_text(f"prompt: '{AGES}'\n")
    res = cli("expand", tmp_path / "exp.yaml")
    assert res.code == 0, res.err
    assert "variant (4): the oldest=1, a old=1, a=1, a young=1" in res.out
    assert "portrait photo of a young warrior chief" in res.out


words = st.text(alphabet="abcdefgh ", min_size=1, max_size=6).map(str.strip).filter(bool)
groups = st.lists(st.lists(words, min_size=1, max_size=4, unique=True), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=groups, sample=st.one_of(st.none(), st.integers(1, 6)), seed=st.integers(0, 2**31))
def test_same_file_same_plan_and_keys(groups, sample, seed):
    template = " x ".join("{" + "|".join(g) + "}" for g in groups)
    text = f"prompt: '{template}'\nseeds: [0, 1]\n"
    if sample:
        text += f"variants: {{sample: {sample}, seed: {seed}}}\n"
    a, b = _plan(text), _plan(text)
    assert [(r.key, r.axes, r.prompt) for r in a.runs] == [(r.key, r.axes, r.prompt) for r in b.runs]
    labels = _labels(a)
    assert len(labels) == len(set(labels)) == len(a.runs) // 2
    if sample is None:
        combos = 1
        for g in groups:
            combos *= len(g)
        assert len({r.prompt for r in a.runs}) <= combos


def test_same_keys_in_another_process_with_another_hash_seed(tmp_path):
    (tmp_path / "wild").mkdir()
    (tmp_path / "wild" / "paint.txt").write_text("blue\nred\nochre\n")
    path = tmp_path / "exp.yaml"
    path.write_text("prompt: 'a {old|young} chief, __paint__ paint'\nwildcards: wild\n"
                    "variants: {sample: 4, seed: 9}\nseeds: [0, 1]\n")
    code = ("import json,sys; from tracker.experiment import plan; from tracker.experiment import parse as spec; "
            "print(json.dumps([[r.key, r.axes] for r in plan.expand(spec.parse_file(sys.argv[1])).runs]))")
    outs = []
    for hash_seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)})
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1] and len(outs[0]) == 8


@pytest.mark.slow
def test_a_variant_sweep_runs_and_is_queried_by_its_labels(cli, tmp_path):
    (tmp_path / "exp.yaml").write_text("name: paint\nmodel: tiny\nprompt: 'a chief with {red|blue} paint'\n"
                                       "seeds: [0]\nsteps: 2\nscheduler: DPMSolverMultistep\n")
    res = cli("run", tmp_path / "exp.yaml", "--no-mlflow", "-q")
    assert res.code == 0 and "2 done" in res.out, res.err
    res = cli("runs", "paint", "--where", "variant=blue", "--json")
    assert res.code == 0, res.err
    runs = json.loads(res.out)
    assert [(r["axes"]["variant"], r["prompt"]) for r in runs] == [("blue", "a chief with blue paint")]
    from tracker.store.runstore import Store
    from tracker.workspace import WorkspaceConfig

    with Store.open(WorkspaceConfig.from_options(home=str(tmp_path / "home")).db_url) as store:
        rec = store.get_run(runs[0]["key"])
    from tracker.mlflow import mapping

    assert mapping.child_params(rec)["axis.variant"] == "blue"


def test_the_warrior_chief_variants_example():
    p = plan.expand(spec.parse_file(REPO / "examples" / "warrior-chief-variants.yaml"))
    assert list(p.labels_per_axis()["age"]) == ["the oldest", "a old", "a", "a young"] and len(p.runs) == 48
    assert {r.settings.prompt_syntax for r in p.runs} == {"a1111"}


def _wild(tmp_path, **files: "str | bytes"):
    folder = tmp_path / "wild"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        path = folder / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return folder


def test_a_wildcards_folder_linking_to_itself_is_walked_once(tmp_path):
    """Real symlinks: three links to the folder itself and one from a subfolder back up (the library's
    os.walk(followlinks=True) walks 3**40 paths: `tracker expand` never ended). Run in a process of its own,
    with a bound on how long it may take so that a hang fails the test instead of stalling the suite."""
    folder = _wild(tmp_path, **{"colours.txt": "red\nblue\n", "people__chief.txt": "old chief\n",
                                "people__.hidden__x.txt": "never\n"})
    for name in ("self", "again", "more"):
        (folder / name).symlink_to(".", target_is_directory=True)
    (folder / "people" / "up").symlink_to("..", target_is_directory=True)
    (folder / "people" / "hues.txt").symlink_to("../colours.txt")  # a link to a file inside: read
    (tmp_path / "exp.yaml").write_text("prompt: 'a __people/chief__ in __people/hues__, __colours__'\nwildcards: wild\n")
    res = run_tracker("expand", tmp_path / "exp.yaml", "--json", timeout=120)
    assert res.code == 0, res.err
    prompts = sorted(r["prompt"] for r in json.loads(res.out))
    assert prompts == sorted(f"a old chief in {h}, {c}" for h in ("red", "blue") for c in ("red", "blue"))


def test_a_link_out_of_the_wildcards_folder_is_refused_in_one_line(cli, tmp_path):
    (tmp_path / "secret.txt").write_text("hidden\n")
    folder = _wild(tmp_path, **{"colours.txt": "red\n"})
    (folder / "stolen.txt").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "exp.yaml").write_text("prompt: 'a __stolen__ car'\nwildcards: wild\n")
    res = cli("expand", tmp_path / "exp.yaml")
    assert_one_line_error(res, "exp.yaml: prompt (line 1)", "stolen.txt is a link to", "outside the folder")
    assert "hidden" not in res.out + res.err


def test_the_wildcards_folder_walk_is_bounded(cli, tmp_path, monkeypatch):
    from tracker import limits

    folder = _wild(tmp_path, **{f"w{i}.txt": "x\n" for i in range(30)})
    (tmp_path / "exp.yaml").write_text("prompt: 'a __w1__ car'\nwildcards: wild\n")
    monkeypatch.setattr(limits, "MAX_WILDCARD_ENTRIES", 20)
    assert_one_line_error(cli("expand", tmp_path / "exp.yaml"), "more than 20 files and folders")
    deep = folder / "/".join("d" * 5)
    deep.mkdir(parents=True)
    (tmp_path / "deep.yaml").write_text("prompt: 'a __w2__ car'\nwildcards: wild\n")
    monkeypatch.setattr(limits, "MAX_WILDCARD_ENTRIES", 1000)
    monkeypatch.setattr(limits, "MAX_WILDCARD_DEPTH", 3)
    assert_one_line_error(cli("expand", tmp_path / "deep.yaml"), "more than 3 folders deep")


def test_wildcard_files_are_utf8_or_refused_naming_the_file_and_line(cli, tmp_path):
    _wild(tmp_path, **{"drinks.txt": "café au lait\nthé\n", "latin.txt": "red\n# note\ncafé\n".encode("latin-1")})
    (tmp_path / "exp.yaml").write_text("prompt: 'a __drinks__'\nwildcards: wild\n")
    assert sorted(r.prompt for r in plan.expand(spec.parse_file(tmp_path / "exp.yaml")).runs) == [
        "a café au lait", "a thé"]
    (tmp_path / "latin.yaml").write_text("prompt: 'a __latin__'\nwildcards: wild\n")
    res = cli("expand", tmp_path / "latin.yaml")
    assert_one_line_error(res, "wildcard file", "latin.txt", "line 3 is not UTF-8")


def test_structured_wildcard_files_are_read_by_the_library_after_the_checks(cli, tmp_path):
    _wild(tmp_path, **{"pantry.yaml": "animals:\n  cats: [tabby, siamese]\n",
                       "more__things.json": '{"tools": ["saw", "2::hammer"]}'})
    (tmp_path / "exp.yaml").write_text("prompt: 'a __animals/cats__ with a __more/tools__'\nwildcards: wild\n")
    assert sorted(r.prompt for r in plan.expand(spec.parse_file(tmp_path / "exp.yaml")).runs) == [
        "a siamese with a hammer", "a siamese with a saw", "a tabby with a hammer", "a tabby with a saw"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bad.json").write_text('{"x": [1,')
    (tmp_path / "bad.yaml").write_text("prompt: 'a __x__'\nwildcards: other\n")
    assert_one_line_error(cli("expand", tmp_path / "bad.yaml"), "wildcard file", "bad.json", "malformed JSON")


def test_a_prompt_longer_than_the_limit_is_refused_where_it_is_made(cli, tmp_path):
    """A 300,000-character wildcard line was planned and generated, then `tracker reproduce` refused the PNG."""
    from tracker import limits

    _wild(tmp_path, **{"long.txt": "short\n" + "x" * 300_000 + "\n"})
    (tmp_path / "exp.yaml").write_text("name: long\nprompt: 'a __long__ car'\nwildcards: wild\n")
    res = cli("expand", tmp_path / "exp.yaml")
    assert_one_line_error(res, "exp.yaml: prompt (line 2)", "300006 characters long", "variant=",
                          f"at most {limits.MAX_PROMPT_CHARS}")
    (tmp_path / "neg.yaml").write_text("name: neg\nprompt: a car\nnegative_prompt: '__long__'\nwildcards: wild\n")
    assert_one_line_error(cli("expand", tmp_path / "neg.yaml"), "neg.yaml: negative_prompt (line 3)",
                          "300000 characters long", "negative_variant=")


def test_the_longest_prompts_a_plan_may_hold_read_back_from_their_png(tmp_path):
    """At the limit, with 4-byte characters in prompt, negative prompt and both templates: the PNG's recipe
    is read back whole (tracker reproduce's reader and checks), so a plan never holds a prompt reproduce refuses."""
    from PIL import Image

    from tracker import limits
    from tracker.experiment.plan import PlannedRun
    from tracker.images import pngmeta

    n = limits.MAX_PROMPT_CHARS - 2
    (tmp_path / "wild").mkdir()
    (tmp_path / "wild" / "p.txt").write_text("🦉" * n + "\n", encoding="utf-8")
    (tmp_path / "wild" / "n.txt").write_text("🦊" * n + "\n", encoding="utf-8")
    pad = "{# " + "🐢" * (limits.MAX_PROMPT_CHARS - 20) + " #}"
    (tmp_path / "exp.yaml").write_text(f"prompt: '{pad}a __p__'\nnegative_prompt: '{pad}a __n__'\nwildcards: wild\n",
                                       encoding="utf-8")
    run = plan.expand(spec.parse_file(tmp_path / "exp.yaml")).runs[0]
    assert len(run.prompt) == limits.MAX_PROMPT_CHARS and len(run.negative_template) <= limits.MAX_PROMPT_CHARS
    png = tmp_path / "x.png"
    pngmeta.save_png(Image.new("RGB", (8, 8)), png, pngmeta.recipe_for(run))
    _, recipe = pngmeta.read_png(png)
    back = PlannedRun.from_recipe(recipe, str(png))
    assert (back.prompt, back.negative_prompt, back.key) == (run.prompt, run.negative_prompt, run.key)
