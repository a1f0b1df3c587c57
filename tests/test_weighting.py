"""Prompt weighting through compel: A1111 syntax translated, weights change images, equal weights do not,
long prompts are not cut, and an A1111 PNG with weights reproduces."""

from __future__ import annotations

import functools
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from compel import Compel
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from test_reproduce import _rewrite
from tracker.images import pngmeta
from tracker.experiment.plan import expand
from tracker.prompts import weighting
from tracker.experiment.parse import parse


def _fragments(compel_text: str) -> list[tuple[str, float]]:
    """What compel's own parser reads: (text, weight) per fragment of the first prompt."""
    prompt = Compel.parse_prompt_string(compel_text).prompts[0]
    return [(f.text, round(f.weight, 4)) for f in prompt.children]


@pytest.mark.parametrize("a1111, compel_text, fragments", [
    ("a (old:1.5) man", "a (old)1.5 man", [("a", 1.0), ("old", 1.5), ("man", 1.0)]),
    ("(old:1.0) man", "old man", [("old man", 1.0)]),
    ("((old)) man", "(old)1.21 man", [("old", 1.21), ("man", 1.0)]),
    ("[blurry] photo", "(blurry)0.9091 photo", [("blurry", 0.9091), ("photo", 1.0)]),
    ("an (old man:1.2), side", "an (old man)1.2, side", [("an", 1.0), ("old man", 1.2), (", side", 1.0)]),
    (r"a \(b\) c", r"a \(b\) c", [("a (b) c", 1.0)]),
    ("<lora:ink:0.8> a (man)", "a (man)1.1", [("a", 1.0), ("man", 1.1)]),
])
def test_a1111_syntax_becomes_compel_syntax_with_a1111s_weights(a1111, compel_text, fragments):
    assert weighting.a1111_to_compel(a1111) == compel_text
    assert _fragments(compel_text) == fragments


def test_break_starts_a_new_chunk_as_compels_and():
    text = weighting.a1111_to_compel("a chief BREAK tribal (paint:0.5)")
    assert text == '("a chief", "tribal (paint)0.5").and()'
    conj = Compel.parse_prompt_string(text)
    assert len(conj.prompts) == 2
    assert [(f.text, f.weight) for f in conj.prompts[1].children] == [("tribal", 1.0), ("paint", 0.5)]


def test_constructs_without_an_equivalent_are_noted():
    assert weighting.notes("x [a:b:10] y, [cat|dog]", "a1111") == [
        "prompt: A1111 prompt editing '[a:b:10]' has no compel equivalent (it switches text mid-sampling); "
        "read as text",
        "prompt: A1111 alternation '[cat|dog]' has no compel equivalent (it alternates every step); read as text"]
    assert weighting.notes("x [a:b:10]", "compel") == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["old", "red paint", "chief"]),
                          st.sampled_from(["plain", "up", "down", "num"]),
                          st.sampled_from([0.5, 1.3, 0.8, 2.0])), min_size=1, max_size=4))
def test_every_translation_parses_and_keeps_a1111s_weights(pieces):
    a1111, want = [], []
    for word, kind, num in pieces:
        a1111.append({"plain": word, "up": f"({word})", "down": f"[{word}]", "num": f"({word}:{num})"}[kind])
        want.append((word, {"plain": 1.0, "up": 1.1, "down": round(1 / 1.1, 4), "num": num}[kind]))
    got = _fragments(weighting.a1111_to_compel(", ".join(a1111)))
    weights = [w for _, w in got]
    for word, w in want:  # every word keeps its weight (adjacent equal weights merge into one fragment)
        assert any(word in text and abs(wt - w) < 1e-3 for text, wt in got), (a1111, got)
    assert all(w > 0 for w in weights)


def test_the_syntax_is_in_the_key_the_recipe_and_the_parameters_chunk():
    text = "prompt: 'a (red:1.5) circle'\nprompt_syntax: [plain, a1111]\nseeds: [0]\n"
    plain, a1111 = expand(parse(text, "t.yaml")).runs
    assert plain.key != a1111.key and a1111.settings.prompt_syntax == "a1111"
    recipe = pngmeta.recipe_for(a1111)
    assert recipe["prompt_syntax"] == "a1111"
    params = pngmeta.a1111_parameters(recipe)
    assert "Prompt syntax: a1111" in params and "Prompt syntax" not in pngmeta.a1111_parameters(
        pngmeta.recipe_for(plain))
    plain_key = expand(parse("prompt: 'a (red:1.5) circle'\nseeds: [0]\n", "t.yaml")).runs[0].key
    assert plain_key == plain.key  # plain keys are what they were before prompt_syntax existed


def test_a_bad_syntax_name_is_one_line(cli, tmp_path):
    (tmp_path / "exp.yaml").write_text("prompt: a\nprompt_syntax: sdnext\n")
    res = cli("expand", tmp_path / "exp.yaml")
    assert res.code == 2 and "prompt_syntax" in res.err and "plain, a1111, compel" in res.err


# ---------------------------------------------------------------------------------------------- images

SHAPES = """\
name: {name}
model: shapes
prompt: {prompt}
prompt_syntax: {syntax}
seeds: [3]
scheduler: DPMSolverMultistep
steps: 4
batch_size: 1
"""


@pytest.fixture(scope="module")
def engine():
    from tracker.engine.core import Engine

    return Engine()


@functools.lru_cache(maxsize=None)
def _cached(engine, prompt: str, syntax: str) -> np.ndarray:
    run = expand(parse(SHAPES.format(name="w", prompt=json.dumps(prompt), syntax=syntax), "w.yaml")).runs[0]
    return np.asarray(engine.generate([run]).images[0].image, dtype=np.int16)


def _image(engine, prompt: str, syntax: str) -> np.ndarray:
    return _cached(engine, prompt, syntax)


@pytest.mark.slow
def test_weights_change_the_image_and_weight_one_changes_nothing(engine):
    plain = _image(engine, "a red circle on white", "a1111")
    assert np.abs(_image(engine, "a (red:1.6) circle on white", "a1111") - plain).max() > 20
    assert np.array_equal(_image(engine, "a (red:1.0) circle on white", "a1111"), plain)
    # compel's own syntax reads the same weights; and with no weights compel equals the plain pipeline
    assert np.array_equal(_image(engine, "a (red)1.6 circle on white", "compel"),
                          _image(engine, "a (red:1.6) circle on white", "a1111"))
    assert np.array_equal(_image(engine, "a red circle on white", "plain"), plain)


@pytest.mark.slow
def test_long_prompts_are_not_cut(engine):
    head = "a red circle on white" + ", white" * 20  # past CLIP's 77 tokens
    assert np.array_equal(_image(engine, head + ", blue", "plain"), _image(engine, head, "plain"))  # cut
    assert not np.array_equal(_image(engine, head + ", blue", "compel"), _image(engine, head, "compel"))


@pytest.mark.slow
def test_an_a1111_png_with_weights_reproduces_through_compel(cli, tmp_path):
    prompt = "a (blue:1.4) [square] on white"
    (tmp_path / "w.yaml").write_text(SHAPES.format(name="weighted", prompt=json.dumps(prompt), syntax="a1111"))
    res = cli("run", tmp_path / "w.yaml", "--no-mlflow", "-q")
    assert res.code == 0, res.err
    (made,) = json.loads(cli("runs", "weighted", "--json").out)
    with Image.open(made["image"]) as im:
        chunk = im.text["parameters"]
    assert "Prompt syntax: a1111" in chunk and prompt in chunk
    foreign = tmp_path / "00001-3.png"  # as A1111 writes it: no Prompt syntax, no tracker fields
    a1111 = (f"{prompt}\nSteps: 4, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 3, Size: 32x32, Model: shapes, "
             f"Version: v1.10.1")
    _rewrite(Path(made["image"]), foreign, a1111, None)
    res = cli("reproduce", foreign)
    assert res.code == 0 and "identical" in res.out, res.out + res.err
    # read as plain text instead, the brackets make another image: the mapping is what reproduced it
    _rewrite(Path(made["image"]), foreign, a1111 + ", Prompt syntax: plain", None)
    assert cli("reproduce", foreign).code == 1


def test_mlflow_params_record_the_syntax():
    from tracker.mlflow import mapping
    from tracker.store.records import RunRecord

    run = expand(parse("prompt: 'a (red:1.5) circle'\nprompt_syntax: a1111\nseeds: [0]\n", "t.yaml")).runs[0]
    fields = {f: None for f in RunRecord.__dataclass_fields__}
    fields.update(run.settings.to_dict(), key=run.key, experiment="t", status="done", prompt=run.prompt,
                  negative_prompt="", axes=dict(run.axes), seed=0, mlflow_synced=False)
    params = mapping.child_params(RunRecord(**fields))
    assert params["prompt_syntax"] == "a1111" and "lora" not in params


@pytest.mark.parametrize("a1111, compel_text, fragments", [
    ("a (old:1000000) man", "a (old)1000000 man", [("a", 1.0), ("old", 1000000.0), ("man", 1.0)]),
    ("(old:0.00001) man", "(old)0 man", [("old", 0.0), ("man", 1.0)]),
    ("(((((old))))) man", "(old)1.6105 man", [("old", 1.6105), ("man", 1.0)]),
])
def test_weights_compel_reads_as_numbers_are_written_without_exponents(a1111, compel_text, fragments):
    """``(x:1000000)`` became ``(x)1e+06``, which compel reads as x at 1, then the text 'e+06'."""
    assert weighting.a1111_to_compel(a1111) == compel_text
    assert _fragments(compel_text) == fragments


@pytest.mark.parametrize("prompt, needles", [
    ("a (x:1.2.3) car", ["prompt_syntax a1111", "the weight '1.2.3' is not a number"]),
    ("a (x:-0.5) car", ["'x' has the negative weight -0.5", "no negative weights"]),
    ("(a BREAK b:1.3)", ["BREAK inside brackets", "outside the brackets"]),
    ("(x:" + "9" * 400 + ")", ["is not a finite number"]),
])
def test_weights_compel_cannot_carry_are_refused_at_expand_in_one_line(cli, tmp_path, prompt, needles):
    """They passed `expand`; then every run failed with a bare ValueError, or compel read literal text
    ('0.5', 'BREAK', '1.3(b)1.3') into the prompt."""
    from test_spec_errors import assert_one_line_error

    (tmp_path / "exp.yaml").write_text(f"prompt: a cat\nnegative_prompt: '{prompt}'\nprompt_syntax: a1111\n")
    assert_one_line_error(cli("expand", tmp_path / "exp.yaml"), "exp.yaml: negative_prompt (line 2)", *needles)
    (tmp_path / "plain.yaml").write_text(f"prompt: '{prompt}'\n")  # plain syntax: brackets are text
    assert cli("expand", tmp_path / "plain.yaml").code == 0
