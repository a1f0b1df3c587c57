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

# The model's scheduler config is complete: every field these schedulers read is there and matches how the model
# was trained (test_scheduler_config_matches_the_training_schedule). Three schedulers still need more steps on it:
# with guidance 7.5 its guided noise prediction changes ~0.1 (relative) per step along the path (~0.02 unguided)
# and completely on the last step (t 52.6 -> 0: min-SNR training gave the lowest noise levels little weight).
# LMS (4th-order Adams on the k-sigmas) and PLMS extrapolate from their last 4 predictions, so at 20 steps those
# changes are amplified (LMS's 19th step: latent std 1.8 -> 5.5): measured 0.62 and 0.62; LMS limited to order 2
# (diagnosis only) 1.00, at guidance 3 0.98. They converge with small steps: LMS 150 steps 0.99, 200 steps 1.00;
# PLMS 100 steps 0.83, 150/200 steps 1.00 (4 prompts x 8 seeds). DPM2 a adds fresh noise at every step: 0.77 at
# 20-25 steps, 0.85 at 30, 0.90 at 40, 0.98 at 50. Details: docs/benchmarks.md (demo model, schedulers).
STEPS_NEEDED = {"LMSDiscreteScheduler": 200, "PNDMScheduler": 200, "KDPM2AncestralDiscreteScheduler": 50}
AT_20_STEPS = {"LMSDiscreteScheduler": 0.62, "PNDMScheduler": 0.62, "KDPM2AncestralDiscreteScheduler": 0.83}
WHAT = ["red circle on white", "green square on black", "blue triangle on white", "yellow circle on black"]


def test_scheduler_config_matches_the_training_schedule():
    """What every scheduler the tracker offers reads from the config is the schedule the model was trained on
    (tools/train_shapes.py's noise schedule), and DDIM/DDPM/PNDM's own fields are set as for SD 1.x."""
    import importlib.util
    import inspect
    import json
    from pathlib import Path

    import diffusers

    from tracker.experiment.schedulers import SCHEDULERS

    path = Path(__file__).resolve().parents[1] / "tools" / "train_shapes.py"
    spec = importlib.util.spec_from_file_location("train_shapes", path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    config = json.loads((FOLDER / "scheduler" / "scheduler_config.json").read_text())
    for key, value in train.train_scheduler_kwargs().items():
        assert config[key] == value, key
    assert config["skip_prk_steps"] is True and config["timestep_spacing"] == "linspace"
    read = set()
    for name in SCHEDULERS:
        read |= set(inspect.signature(getattr(diffusers, name).__init__).parameters)
    schedule = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                "timestep_spacing", "steps_offset", "clip_sample", "set_alpha_to_one", "skip_prk_steps",
                "rescale_betas_zero_snr", "thresholding"}
    assert schedule <= read
    assert schedule <= set(config)


def _sweep(home, name: str, schedulers: list[str], steps: int):
    import tracker

    exp = tracker.Experiment("a {{ what }}", name=name, model="shapes", steps=steps, seeds=[0, 1],
                             metrics=["shapes"], axes={"what": WHAT}, scheduler=schedulers)
    result = tracker.run(exp, home=home, mlflow=False, progress=False)
    assert result.ok, result.failures
    return {(c, steps): [r.metrics["shapes"] for r in result.runs if r.record.scheduler == c] for c in schedulers}


@pytest.fixture(scope="module")
def every_scheduler(tmp_path_factory):
    """4 prompts x 2 seeds x every scheduler at 20 steps, and the three that need more at their step counts, scored
    with the ``shapes`` metric: {(class, steps): scores} (~2 min)."""
    from tracker.experiment.schedulers import SCHEDULERS

    home = tmp_path_factory.mktemp("sched") / "home"
    names = [c for c in SCHEDULERS if c != "DPMSolverSDEScheduler" or _has("torchsde")]
    scores = _sweep(home, "every-scheduler", names, STEPS)
    for steps in sorted(set(STEPS_NEEDED.values())):
        slow = [c for c, n in STEPS_NEEDED.items() if n == steps]
        scores.update(_sweep(home, f"every-scheduler-{steps}", slow, steps))
    return scores


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _mean(scores: list[float]) -> float:
    assert len(scores) == 2 * len(WHAT), scores
    return sum(scores) / len(scores)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", __import__("tracker.experiment.schedulers", fromlist=["SCHEDULERS"]).SCHEDULERS)
def test_every_scheduler_makes_what_the_prompt_asks_for(every_scheduler, scheduler):
    """At 20 steps, or at the steps it needs on this model (``STEPS_NEEDED``), every scheduler the tracker offers
    scores >= 0.9 with the ``shapes`` metric (DDIM made noise before the config said ``clip_sample: false``)."""
    if scheduler == "DPMSolverSDEScheduler" and not _has("torchsde"):
        pytest.skip(f"{scheduler} needs the optional package torchsde")
    scores = every_scheduler[scheduler, STEPS_NEEDED.get(scheduler, STEPS)]
    assert _mean(scores) >= 0.9, scores


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [
    pytest.param(c, marks=pytest.mark.xfail(reason=f"measured {score} at 20 steps", strict=True))
    for c, score in AT_20_STEPS.items()])
def test_schedulers_that_need_more_steps_fall_short_at_20(every_scheduler, scheduler):
    """Strict: once a retrained model lets them follow the prompt at 20 steps, this fails and STEPS_NEEDED goes."""
    assert _mean(every_scheduler[scheduler, STEPS]) >= 0.9, every_scheduler[scheduler, STEPS]
