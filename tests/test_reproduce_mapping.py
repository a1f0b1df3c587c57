"""Reproduce without generating: recipes and A1111 chunks back to runs, pixel drift, warnings, sampling."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tracker.images import pngmeta
from tracker.reproduce import a1111, regenerate as rp, verify as vf
from tracker.errors import TrackerError
from tracker.experiment.plan import expand
from tracker.experiment.parse import parse

A1111 = ("a castle, (golden hour:1.2)\nNegative prompt: text\n"
         "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x96, Model: tiny")


def _runs(text: str):
    return expand(parse(text, "t.yaml", default_name="t")).runs


def test_a_recipe_rebuilds_the_planned_run_exactly():
    for run in _runs("""
prompt: "a {{ x }}, b: c"
negative_prompt: "n"
axes: {x: [one, two]}
scheduler: [DPM++ 2M SDE Karras, Euler a, default]
seeds: [0, 9]
size: 64x64
batch_size: 2
"""):
        recipe = json.loads(json.dumps(pngmeta.recipe_for(run, model_revision="sha256:ab", device_used="cpu")))
        assert rp.run_from_recipe(recipe) == run


def test_a_broken_recipe_is_one_error():
    with pytest.raises(TrackerError, match="recipe is incomplete or malformed"):
        rp.run_from_recipe({"prompt": "x"}, "x.png")


def test_a1111_maps_onto_a_run_and_notes_the_rest():
    run, notes = a1111.run_from_a1111(pngmeta.parse_a1111(A1111 + ", Clip skip: 2, ENSD: 31337, Version: v1.7.0"))
    s = run.settings
    assert (run.seed, s.steps, s.guidance_scale, s.width, s.height, s.model) == (1, 4, 7.0, 64, 96, "tiny")
    assert (s.scheduler, s.options()) == ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True})
    assert (run.prompt, run.negative_prompt, run.experiment) == ("a castle, (golden hour:1.2)", "text", "reproduce")
    assert s.prompt_syntax == "a1111"  # a foreign PNG's weights are A1111's, read through compel
    assert s.call_kwargs() == {"clip_skip": 1}  # A1111's Clip skip 2 is diffusers' clip_skip 1 (the penultimate layer)
    assert notes == ["ENSD: 31337 (not supported, ignored)"]


def test_a1111_old_style_sampler_names_and_neutral_values():
    text = A1111.replace("Sampler: DPM++ 2M, Schedule type: Karras", "Sampler: DPM++ 2M Karras") + ", Clip skip: 1"
    run, notes = a1111.run_from_a1111(pngmeta.parse_a1111(text))
    assert run.settings.options() == {"use_karras_sigmas": True}
    assert notes == []


def test_a1111_unknown_sampler_and_schedule_are_noted():
    run, notes = a1111.run_from_a1111(pngmeta.parse_a1111(A1111.replace("Karras", "Align Your Steps")))
    assert run.settings.scheduler == "DPMSolverMultistepScheduler" and run.settings.options() == {}
    assert "Schedule type: Align Your Steps (not supported, ignored)" in notes
    run, notes = a1111.run_from_a1111(pngmeta.parse_a1111(A1111.replace("DPM++ 2M", "Restart")))
    assert run.settings.scheduler == "default"
    assert "Sampler: Restart (unknown, used the model's own scheduler)" in notes
    # the unknown sampler's schedule type is kept as a note, not dropped
    assert "Schedule type: Karras (not used: its sampler is unknown)" in notes
    text = A1111.replace("DPM++ 2M", "Restart").replace("Karras", "SGM Uniform")
    assert "Schedule type: SGM Uniform (not used: its sampler is unknown)" in rp.run_from_a1111(pngmeta.parse_a1111(text))[1]


def test_a1111_rng_cpu_is_what_the_tracker_does():
    """A Forge/A1111 PNG's ``RNG: CPU`` is a CPU generator (supported, no note); ``NV`` is noted."""
    run, notes = rp.run_from_a1111(pngmeta.parse_a1111(A1111 + ", RNG: CPU, Version: f2.0.1v1.10.1-previous-519"))
    assert run.settings.generator_device == "cpu" and notes == []
    run, notes = rp.run_from_a1111(pngmeta.parse_a1111(A1111 + ", RNG: NV"))
    assert notes == ["RNG: NV (not supported: noise drawn with a cpu generator)"]
    (ours,) = _runs('prompt: "x"\nsize: 64x64\nseeds: [4]\n')
    text = pngmeta.a1111_parameters(pngmeta.recipe_for(ours))
    assert pngmeta.parse_a1111(text).settings["RNG"] == "CPU"
    assert rp.run_from_a1111(pngmeta.parse_a1111(text))[1] == []


def test_our_own_parameters_chunk_alone_rebuilds_the_run():
    (run,) = _runs('prompt: "x, y: z"\nscheduler: DPM++ 2M SDE\nscheduler_options: {solver_order: 3}\n'
                   'dtype: bfloat16\nsize: 64x64\nseeds: [4]\n')
    back, notes = a1111.run_from_a1111(pngmeta.parse_a1111(pngmeta.a1111_parameters(pngmeta.recipe_for(run))))
    assert notes == []
    assert back.key == run.key and back.settings.options() == run.settings.options()
    assert (back.experiment, back.settings.dtype) == ("t", "bfloat16")


@pytest.mark.parametrize("change, message", [
    (("Steps: 4, ", ""), "gives no Steps"),
    (("Size: 64x96", "Size: 7x7"), "width: must be an integer of at least 8 pixels but is 7"),
    (("Size: 64x96", "Size: 100000x100000"), "size: 100000x100000 is more than 16777216 pixels; pass --max-pixels"),
    (("Steps: 4", "Steps: 1e8"), "Steps: '1e8' must be a positive integer"),
    (("Steps: 4", "Steps: 100000000"), "steps: 100000000 is more than 1000; pass --max-steps"),
    (("Model: tiny", "Model: runwayml/stable-diffusion-v1-5"), "Hugging Face Hub id; a PNG cannot make the tracker fetch"),
    (("Model: tiny", "Model: tiny, Dtype: int8"), "dtype: must be one of float32, float16, bfloat16 but is 'int8'"),
    (("Seed: 1", "Seed: x"), "Seed: 'x' must be an integer seed"),
    (("Model: tiny", "Model: v1-5-pruned"), "model: 'v1-5-pruned' is not a builtin model"),
    (("CFG scale: 7", "CFG scale: lots"), "CFG scale: 'lots' must be a number"),
])
def test_a1111_values_that_cannot_be_run_are_one_error(change, message):
    with pytest.raises(TrackerError, match=message.replace("+", r"\+").replace("(", r"\(")):
        a1111.run_from_a1111(pngmeta.parse_a1111(A1111.replace(*change)), where="x.png")


def test_model_override_and_hub_ids():
    text = A1111.replace("Model: tiny", "Model: v1-5-pruned")
    run, notes = a1111.run_from_a1111(pngmeta.parse_a1111(text), model="tiny")
    assert run.settings.model == "tiny" and "Model: v1-5-pruned (replaced by --model tiny)" in notes
    hub = A1111.replace("Model: tiny", "Model: runwayml/stable-diffusion-v1-5")
    run, _ = a1111.run_from_a1111(pngmeta.parse_a1111(hub), model="runwayml/stable-diffusion-v1-5")  # --model: trusted
    assert run.settings.model == "runwayml/stable-diffusion-v1-5"


def test_a_size_that_is_not_a_multiple_of_8_is_rounded_with_a_note():
    """Issue 13, problem 7: diffusers needs multiples of 8; a foreign PNG's 513x771 is rounded, not fatal."""
    run, notes = a1111.run_from_a1111(pngmeta.parse_a1111(A1111.replace("Size: 64x96", "Size: 65x99")))
    assert (run.settings.width, run.settings.height) == (64, 96)
    assert "Size: 65x99 rounded down to 64x96 (diffusers needs multiples of 8)" in notes


def test_compare_counts_pixel_drift():
    a = np.zeros((4, 5, 3), dtype=np.uint8)
    b = a.copy()
    assert rp.compare(Image.fromarray(a), Image.fromarray(b)).identical
    b[1, 2] = (3, 0, 1)
    b[0, 0, 0] = 1
    d = rp.compare(Image.fromarray(a), Image.fromarray(b))
    assert (d.identical, d.max_abs, d.differing, d.pixels) == (False, 3, 2, 20)
    assert d.mean_abs == pytest.approx(5 / 60)
    assert "max abs pixel difference 3" in d.describe() and "2 of 20 pixels differ" in d.describe()
    d = rp.compare(Image.fromarray(a), Image.new("RGB", (8, 8)))
    assert not d.identical and d.reason == "size 8x8 instead of 5x4"


def test_environment_warnings_name_what_changed():
    then = {"environment": {"torch": "2.1.0", "cuda": "12.1", "device_name": "NVIDIA A100"},
            "model_revision": "abc", "device_used": "cuda"}
    now = {"environment": {"torch": "2.13.0", "cuda": None, "device_name": "NVIDIA A100", "device": "cpu"},
           "model_revision": "abd", "device_used": "cpu"}
    assert rp.environment_warnings(then, now) == [
        "torch differs: 2.1.0 when the image was made, 2.13.0 now",
        "device differs: cuda when the image was made, cpu now",
        "model revision differs: abc when the image was made, abd now",
    ]
    assert rp.environment_warnings(then, then) == []


def test_the_verify_sample_is_the_same_every_time_and_in_plan_order():
    records = [SimpleNamespace(key=f"{i:04x}", i=i) for i in range(40)]
    first = vf.sample_runs(records, 8)
    assert len(first) == 8 and [r.i for r in first] == sorted(r.i for r in first)
    assert vf.sample_runs(list(reversed(records)), 8)[::-1] == first
    assert vf.sample_runs(records, 100) == records


def test_verify_table():
    rows = [vf.VerifyRow("k1", {"age": "old", "seed": "1"}, rp.Drift(True, 0, 0.0, 0, 16)),
            vf.VerifyRow("k2", {}, rp.Drift.failed("the original image /x.png is missing"))]
    lines = vf.format_table(rows).splitlines()
    assert lines[0].split() == ["key", "labels", "max", "mean", "result"]
    assert lines[2].split() == ["k1", "age=old,", "seed=1", "0", "0.0000", "identical"]
    assert lines[3].endswith("differs: the original image /x.png is missing")
