"""End-to-end conditioning checks with the committed ``shapes`` model (tests never train), and the
analyzer on the procedural images themselves (no model needed)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tracker.experiment import families

from tracker.experiment import model_refs as models
from tracker.demo import shapes as S

FOLDER = models.builtin_path("shapes")
SEEDS = [0, 1, 2, 3]
STEPS = 20
GUIDANCE = 7.5


# ---------------------------------------------------------------- analyzer (no model)

def test_analyzer_reads_every_procedural_combo():
    rng = np.random.default_rng(123)
    preds, truths = [], []
    for combo in S.combos():
        for _ in range(5):
            preds.append(S.analyze(S.draw(*combo, rng)).triple)
            truths.append(combo)
    assert S.score(preds, truths) == {"colour": 1.0, "shape": 1.0, "background": 1.0}


def test_analyzer_fill_ratios_match_the_shapes():
    rng = np.random.default_rng(7)
    for shape, expected in S.FILL.items():
        fills = [S.analyze(S.draw("red", shape, "black", rng)).fill for _ in range(10)]
        assert abs(np.mean(fills) - expected) < 0.06, (shape, fills)


def test_analyzer_on_an_empty_image_finds_no_shape():
    from PIL import Image
    a = S.analyze(Image.new("RGB", (S.SIZE, S.SIZE), (0, 0, 0)))
    assert a.background == "black"
    assert a.shape is None and a.colour is None and a.fg_pixels == 0
    assert S.score([a.triple], [("red", "circle", "black")]) == {"colour": 0.0, "shape": 0.0, "background": 1.0}


def test_draw_is_deterministic_per_seed():
    a = np.asarray(S.draw("blue", "triangle", "white", 5))
    b = np.asarray(S.draw("blue", "triangle", "white", 5))
    c = np.asarray(S.draw("blue", "triangle", "white", 6))
    assert (a == b).all()
    assert (a != c).any()


# ---------------------------------------------------------------- the committed model



@pytest.fixture(scope="module")
def pipe():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    p = diffusers.DiffusionPipeline.from_pretrained(str(FOLDER), local_files_only=True)
    p.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(p.scheduler.config)
    p.set_progress_bar_config(disable=True)
    return p


def gen(pipe, prompts, seeds, negative=None):
    import torch
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    neg = None if negative is None else [negative] * len(prompts)
    out = pipe(list(prompts), negative_prompt=neg, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               generator=gens, output_type="np")
    return [np.clip(np.round(im * 255), 0, 255).astype(np.uint8) for im in out.images]


@pytest.fixture(scope="module")
def red_blue(pipe):
    """Same seeds, 'a red circle on white' then 'a blue circle on white'."""
    n = len(SEEDS)
    imgs = gen(pipe, ["a red circle on white"] * n + ["a blue circle on white"] * n, SEEDS * 2)
    return imgs[:n], imgs[n:]


def test_model_folder_is_small_safetensors_at_native_32px():
    files = [f for f in FOLDER.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 20e6
    assert not any(f.suffix in (".bin", ".pt", ".ckpt", ".pth") for f in files)
    assert any(f.suffix == ".safetensors" for f in files)
    assert families.facts_for("shapes").native_size == (S.SIZE, S.SIZE)


def test_tokenizer_has_one_token_per_prompt_word(pipe):
    for word in S.vocabulary():
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_red_prompts_give_redder_images_than_blue_on_the_same_seeds(red_blue):
    def r_minus_b(img):
        mask = S.foreground_mask(img)
        assert mask.sum() > 10
        fg = img[mask].astype(np.float32)
        return float((fg[:, 0] - fg[:, 2]).mean())

    reds, blues = red_blue
    diffs = [r_minus_b(r) - r_minus_b(b) for r, b in zip(reds, blues)]
    assert all(d > 50 for d in diffs), diffs
    assert [S.analyze(im).colour for im in reds].count("red") >= len(SEEDS) - 1
    assert [S.analyze(im).colour for im in blues].count("blue") >= len(SEEDS) - 1


def test_prompt_change_keeps_the_seeds_layout(red_blue):
    reds, blues = red_blue
    ious = []
    for r, b in zip(reds, blues):
        mr, mb = S.foreground_mask(r), S.foreground_mask(b)
        ious.append((mr & mb).sum() / max(1, (mr | mb).sum()))
        assert np.abs(r.astype(int) - b.astype(int)).mean() > 5  # the image changed
    assert np.mean(ious) > 0.5, ious
    # ... while different seeds put the shape elsewhere
    other = [(S.foreground_mask(reds[i]) & S.foreground_mask(reds[i + 1])).sum()
             / max(1, (S.foreground_mask(reds[i]) | S.foreground_mask(reds[i + 1])).sum())
             for i in range(len(reds) - 1)]
    assert np.mean(ious) > np.mean(other), (ious, other)


def test_negative_prompt_changes_the_image(pipe):
    prompts = ["a red square on white"] * 2
    plain = gen(pipe, prompts, [0, 1])
    one_word = gen(pipe, prompts, [0, 1], negative="red")
    opposite = gen(pipe, prompts, [0, 1], negative="a blue circle on black")
    for a, b, c in zip(plain, one_word, opposite):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 1  # "" vs "red" as the unconditional
        assert np.abs(a.astype(int) - c.astype(int)).mean() > 10
        assert S.analyze(c).triple[0::2] == ("red", "white")  # still follows the prompt


def test_same_seed_same_image_and_background_follows_prompt(pipe):
    a = gen(pipe, ["a green triangle on black", "a green triangle on white"], [3, 3])
    b = gen(pipe, ["a green triangle on black"], [3])
    # batch of 2 vs alone: float noise ~1e-6 may move a few pixels by one 8-bit level (STACK-NOTES)
    d = np.abs(a[0].astype(int) - b[0].astype(int))
    assert d.max() <= 1 and d.mean() < 0.05, (d.max(), d.mean())
    assert (gen(pipe, ["a green triangle on black"], [3])[0] == b[0]).all()  # same call twice: identical
    assert S.analyze(a[0]).background == "black"
    assert S.analyze(a[1]).background == "white"


def test_example_file_through_the_engine_follows_the_colour_axis():
    """examples/shapes.yaml -> plan -> tracker.engine.core: the colour axis shows in the images."""
    from pathlib import Path

    from tracker.experiment import plan, parse as spec
    from tracker.engine.core import Engine

    exp = spec.parse_file(str(Path(__file__).resolve().parents[1] / "examples" / "shapes.yaml"))
    planned = plan.expand(exp).runs
    assert {(r.settings.model, r.settings.width, r.settings.height) for r in planned} == {("shapes", S.SIZE, S.SIZE)}
    runs = [r for r in planned
            if r.labels["shape"] == "circle" and r.labels["negative"] == "none"
            and r.labels["colour"] in ("red", "blue") and r.labels["seed"] in ("0", "1")]
    assert len(runs) == 4
    result = Engine(device="cpu").generate(runs)
    for run, img in zip(runs, result.images):
        assert img.error is None
        assert img.image.size == (S.SIZE, S.SIZE)
        assert S.analyze(img.image).colour == run.labels["colour"], run.prompt


# ---------------------------------------------------------------- every scheduler the tracker offers

# Linear multistep of order 4 (LMS, PLMS) and DPM2 a follow the prompt on this small model only partly, whatever
# the scheduler config says (tried: timestep spacing leading/linspace/trailing, steps_offset 0/1, 20/30/50 steps):
# measured 0.62, 0.62 and 0.83 at 20 steps. Strict: the test fails once they reach 0.9, so the mark goes then.
WEAK = {"LMSDiscreteScheduler": 0.62, "PNDMScheduler": 0.62, "KDPM2AncestralDiscreteScheduler": 0.83}


@pytest.fixture(scope="module")
def every_scheduler(tmp_path_factory):
    """One sweep: 4 prompts x 2 seeds x every scheduler at 20 steps, scored with the ``shapes`` metric (~50 s)."""
    import tracker
    from tracker.experiment.schedulers import SCHEDULERS

    names = [c for c in SCHEDULERS if c != "DPMSolverSDEScheduler" or _has("torchsde")]
    exp = tracker.Experiment(
        "a {{ what }}", name="every-scheduler", model="shapes", steps=STEPS, seeds=[0, 1], metrics=["shapes"],
        axes={"what": ["red circle on white", "green square on black", "blue triangle on white",
                       "yellow circle on black"]}, scheduler=names)
    result = tracker.run(exp, home=tmp_path_factory.mktemp("sched") / "home", mlflow=False, progress=False)
    assert result.ok, result.failures
    return {name: [r.metrics["shapes"] for r in result.runs if r.record.scheduler == name] for name in names}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [
    pytest.param(c, marks=pytest.mark.xfail(c in WEAK, reason=f"measured {WEAK.get(c)}", strict=True))
    for c in __import__("tracker.experiment.schedulers", fromlist=["SCHEDULERS"]).SCHEDULERS])
def test_every_scheduler_makes_what_the_prompt_asks_for(every_scheduler, scheduler):
    """The model's scheduler config is complete (DDIM made noise without ``clip_sample: false``)."""
    if scheduler not in every_scheduler:
        pytest.skip(f"{scheduler} needs the optional package torchsde")
    scores = every_scheduler[scheduler]
    assert len(scores) == 8 and sum(scores) / len(scores) >= 0.9, scores
