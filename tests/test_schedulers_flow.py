"""Flow-matching schedulers (issue 23, point 4): FlowMatchEulerDiscrete, FlowMatchHeunDiscrete and FlowMatchLCM
with their options on flow models (SD3, Flux), the A1111 names that have a flow equivalent, a scheduler of the
wrong family refused in one line before anything is generated, and ``scheduler: default`` on a flow model
writing its PNG (its A1111 sampler name, or none).

The pure tests need no model; the slow ones build tiny random-weight pipelines (``tests/families.py``) once per
session and compare ``tracker run`` with a plain diffusers call given the same scheduler.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import pixels, runs_by_seed
from tracker.experiment import schedulers
from tracker.experiment.schedulers import SchedulerChoice

# ------------------------------------------------------------------------------------ pure: names and PNG fields


def test_flow_schedulers_resolve_by_class_and_short_name():
    for cls in schedulers.FLOW_SCHEDULERS:
        assert schedulers.resolve(cls) == (cls, {})
        assert schedulers.resolve(cls.removesuffix("Scheduler")) == (cls, {})
    assert schedulers.resolve("FlowMatchEulerDiscrete", {"shift": 3.0, "stochastic_sampling": True}) == (
        "FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "stochastic_sampling": True})


def test_a1111_euler_and_heun_mean_the_flow_ones_on_a_flow_model_only():
    flow = "FlowMatchEulerDiscreteScheduler"
    assert schedulers.for_model("EulerDiscreteScheduler", flow) == flow
    assert schedulers.for_model("HeunDiscreteScheduler", flow) == "FlowMatchHeunDiscreteScheduler"
    assert schedulers.for_model("DPMSolverMultistepScheduler", flow) == "DPMSolverMultistepScheduler"  # refused later
    assert schedulers.for_model("EulerDiscreteScheduler", "PNDMScheduler") == "EulerDiscreteScheduler"
    # what ran is what every display shows (MLflow, the PNG): the record's scheduler config names it
    euler = SchedulerChoice("EulerDiscreteScheduler", (("use_karras_sigmas", True),))
    assert euler.made_with({"_class_name": flow}) == SchedulerChoice(flow, (("use_karras_sigmas", True),))
    assert euler.made_with({"_class_name": "EulerDiscreteScheduler"}) is euler
    assert euler.made_with({"_class_name": "DDIMScheduler"}) is euler  # not an equivalent: stays as asked


def test_png_fields_of_a_flow_model_default_scheduler_and_of_an_unknown_class():
    """``scheduler: default`` on Flux/SD3 made the PNG writer raise "unknown scheduler" after generation (the
    sweep ended, nothing written); a flow scheduler is written as Forge writes it, an unknown class as none."""
    from tracker.images import pngmeta

    base = {"steps": 4, "guidance_scale": 3.5, "seed": 1, "width": 32, "height": 32, "prompt": "a cat"}
    flow = {**base, "scheduler": "default", "scheduler_config": {"_class_name": "FlowMatchEulerDiscreteScheduler"}}
    fields = pngmeta.a1111_fields(flow)
    assert (fields["Sampler"], fields["Schedule type"]) == ("Euler", "Simple")
    karras = {**base, "scheduler": "FlowMatchEulerDiscreteScheduler",
              "scheduler_options": {"use_karras_sigmas": True, "shift": 2.0}}
    fields = pngmeta.a1111_fields(karras)
    assert (fields["Sampler"], fields["Schedule type"]) == ("Euler", "Karras")
    assert json.loads(pngmeta.unquote(fields["Scheduler options"])) == {"shift": 2.0}
    lcm = {**base, "scheduler": "FlowMatchLCMScheduler"}
    assert pngmeta.a1111_fields(lcm)["Sampler"] == "FlowMatchLCM"
    odd = {**base, "scheduler": "default", "scheduler_config": {"_class_name": "SCMScheduler"}}
    fields = pngmeta.a1111_fields(odd)
    assert fields["Sampler"] is None and fields["Schedule type"] is None
    assert "Sampler" not in pngmeta.a1111_parameters(odd)


def test_a1111_simple_schedule_reads_as_the_models_own_sigmas():
    from tracker.images import pngmeta
    from tracker.reproduce import regenerate

    text = "a cat\nSteps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 3.5, Seed: 1, Size: 32x32"
    run, notes = regenerate.run_from_a1111(pngmeta.parse_a1111(text), model="tiny")
    assert (run.settings.scheduler, run.settings.scheduler_options, notes) == ("EulerDiscreteScheduler", (), [])


# ------------------------------------------------------------------------------------ slow: tiny flow models


@pytest.fixture(scope="session")
def flow_models(tmp_path_factory):
    import families as builders

    root = tmp_path_factory.mktemp("flow-models")
    return lambda family: builders.cached(family, root)


PROMPT = "a photo of a red cat"


def _yaml(name: str, folder: Path, scheduler: str, options: dict | None = None, seeds: str = "[0, 1]",
          extra: str = "") -> str:
    lines = [f"name: {name}", f"model: {folder}", f"prompt: {PROMPT}", f"seeds: {seeds}", "steps: 3",
             "size: 32x32", f"scheduler: {json.dumps(scheduler)}"]
    if options:
        lines.append(f"scheduler_options: {json.dumps(options)}")
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)




def _plain(folder: Path, scheduler: str, options: dict, run: dict) -> np.ndarray:
    """A plain diffusers call with ``scheduler`` built from the model's own config, as 8-bit pixels."""
    import diffusers
    import torch

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config, **options)
    out = pipe(prompt=[PROMPT], num_inference_steps=run["steps"], guidance_scale=run["guidance_scale"],
               width=run["width"], height=run["height"], generator=[torch.Generator("cpu").manual_seed(run["seed"])],
               output_type="np", **(run.get("call") or {})).images
    return (np.asarray(out[0]) * 255).round().astype(int)


@pytest.mark.slow
@pytest.mark.parametrize("family, scheduler, options, runs_as", [
    ("flux", "Euler", {"use_karras_sigmas": True}, "FlowMatchEulerDiscreteScheduler"),
    ("flux", "FlowMatchEulerDiscrete", {"use_dynamic_shifting": False, "shift": 2.0},
     "FlowMatchEulerDiscreteScheduler"),
    ("sd3", "FlowMatchHeunDiscrete", {"shift": 2.0}, "FlowMatchHeunDiscreteScheduler"),
    ("sd3", "FlowMatchEulerDiscrete", {"use_exponential_sigmas": True}, "FlowMatchEulerDiscreteScheduler"),
])
def test_a_flow_scheduler_runs_as_plain_diffusers_runs_it(family, scheduler, options, runs_as, flow_models, cli,
                                                          write_yaml):
    folder = flow_models(family)
    path = write_yaml(_yaml("flow", folder, scheduler, options))
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    runs = runs_by_seed(cli, "flow")
    assert [r["status"] for r in runs] == ["done", "done"]
    for r in runs:
        assert r["scheduler_config"]["_class_name"] == runs_as
        want = _plain(folder, runs_as, options, r)
        got = pixels(r["image"])
        assert got.shape == want.shape and np.abs(got - want).max() <= 2, (family, scheduler, r["seed"])
    with Image.open(runs[0]["image"]) as im:
        params = im.text["parameters"]
    assert f"Sampler: {schedulers.sampler_name(runs_as)[0]}," in params


@pytest.mark.slow
@pytest.mark.parametrize("scheduler, options", [("FlowMatchEulerDiscrete", {"stochastic_sampling": True}),
                                                ("FlowMatchLCM", {})])
def test_a_stochastic_flow_scheduler_draws_its_noise_from_the_seed(scheduler, options, flow_models, cli, write_yaml):
    """Flux calls ``scheduler.step`` without a generator: ``stochastic_sampling`` and FlowMatchLCM drew torch's
    global generator, so ``reproduce`` differed by ~200 levels. Made in a batch of 2, each image is regenerated
    alone, identical (its noise continues its own seeded generator)."""
    folder = flow_models("flux")
    path = write_yaml(_yaml("stoch", folder, scheduler, options, extra="batch_size: 2\n"))
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    runs = runs_by_seed(cli, "stoch")
    assert runs[0]["batch_size_used"] == 2
    assert np.abs(pixels(runs[0]["image"]) - pixels(runs[1]["image"])).max() > 0
    for r in runs:
        res = cli("reproduce", r["image"])
        assert res.code == 0 and "identical" in res.out, res.out + res.err


@pytest.mark.slow
@pytest.mark.parametrize("family, scheduler, says", [
    ("flux", "DPM++ 2M Karras", "scheduler DPMSolverMultistepScheduler (DPM++ 2M Karras) cannot run model"),
    ("flux", "FlowMatchHeunDiscrete", "FluxPipeline passes its own mu and sigmas to set_timesteps"),
    ("sd3", "UniPC", "scheduler UniPCMultistepScheduler (UniPC) cannot run model"),
    ("sd15", "FlowMatchEulerDiscrete", "not in the compatibles of the model's PNDMScheduler"),
])
def test_a_scheduler_of_the_wrong_family_is_refused_in_one_line_before_anything_is_made(
        family, scheduler, says, flow_models, cli, write_yaml, tmp_path):
    folder = flow_models(family)
    path = write_yaml(_yaml("wrong", folder, scheduler))
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    assert lines[0].startswith(f"error: {path}: ") and says in lines[0], lines[0]
    if family == "sd15":
        assert "compatible: DDIM, DDPM, DEISMultistep, DPMSolverMultistep" in lines[0]
    else:
        assert lines[0].endswith("compatible: FlowMatchEulerDiscrete (A1111 'Euler'), FlowMatchLCM") or \
            "FlowMatchHeunDiscrete" in lines[0].split("compatible: ")[1], lines[0]
    home = tmp_path / "home"
    assert not list(home.glob("images/**/*.png"))
    res = cli("runs", "wrong", "--json")
    assert res.code != 0 or json.loads(res.out) == []


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_scheduler_default_on_a_flow_model_writes_its_pngs(family, flow_models, cli, write_yaml):
    folder = flow_models(family)
    path = write_yaml(_yaml("default", folder, "default"))
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    runs = runs_by_seed(cli, "default")
    assert [r["status"] for r in runs] == ["done", "done"]
    for r in runs:
        assert r["scheduler_config"]["_class_name"] == "FlowMatchEulerDiscreteScheduler"
        with Image.open(r["image"]) as im:
            assert "Sampler: Euler, Schedule type: Simple," in im.text["parameters"]
    res = cli("reproduce", runs[1]["image"])
    assert res.code == 0 and "identical" in res.out, res.out + res.err
