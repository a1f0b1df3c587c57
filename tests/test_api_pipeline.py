"""Bring your own pipeline: a pipeline object built by the test runs through the same engine, gives the
same images as the CLI on the same plan, is given back as it came, and never shares keys with another."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

import tracker
from tracker.experiment import model_refs as models
from tracker.errors import TrackerError

PLAN = """\
name: own
model: tiny
prompt: "portrait photo of {{ age }} warrior chief"
axes:
  age: {old: "a old", young: "a young"}
seeds: [0, 1]
scheduler: DPMSolverMultistep
steps: 2
"""


def tiny_pipeline():
    """The tiny model loaded the way a user loads theirs, with a scheduler swapped in by hand."""
    pipe = DiffusionPipeline.from_pretrained(models.builtin_path("tiny"), use_safetensors=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_own_pipeline_gives_the_cli_images(pipe, cli, write_yaml, tmp_path):
    path = write_yaml(PLAN)
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.err
    by_cli = {tuple(sorted(r["axes"].items())): r for r in json.loads(cli("runs", "own", "--json").out)}

    # the same plan without a scheduler: the pipeline's own (the DPMSolverMultistep the test swapped in)
    exp = tracker.Experiment.from_yaml(path).replace(scheduler="default", name="own-pipe")
    scheduler, vae = pipe.scheduler, pipe.vae
    result = tracker.run(exp, pipeline=pipe, home=tmp_path / "api-home", mlflow=False, progress=False)
    assert result.done == 4 and result.ok
    assert pipe.scheduler is scheduler and pipe.vae is vae  # handed back as it came
    for run in result.runs:
        other = by_cli[tuple(sorted(run.record.axes.items()))]
        assert run.image.tobytes() == tracker.open(tmp_path / "home").run(other["key"]).image.tobytes()
        assert run.key != other["key"] and run.made_with_user_pipeline
        recipe = run.recipe
        assert recipe["model"].startswith("pipeline:") and recipe["pipeline"]["user_pipeline"] is True
        assert recipe["pipeline"]["class"] == "StableDiffusionPipeline"
        assert recipe["pipeline"]["components"]["scheduler"]["class"] == "DPMSolverMultistepScheduler"
        assert recipe["pipeline"]["components"]["unet"]["config_sha256"]
        assert recipe["model_revision"].startswith("sha256:")

    # reproduce: the tracker cannot rebuild the object, and says so; with the object it can
    ws = tracker.open(tmp_path / "api-home")
    key = result.runs[0].key
    with pytest.raises(TrackerError, match="made with a pipeline object passed to tracker.run"):
        ws.reproduce(key)
    res = cli("--home", tmp_path / "api-home", "reproduce", key)  # the CLI says it in one line
    assert res.code == 2 and "cannot rebuild" in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert ws.reproduce(key, pipeline=pipe).drift.identical
    assert pipe.scheduler is scheduler
    # the report reads the stored experiment back with the same keys (no "earlier version" notes)
    index = ws.report("own-pipe", out=tmp_path / "report")
    assert "not in the current plan" not in index.read_text()


def test_swapped_scheduler_is_restored_and_other_pipelines_get_other_keys(pipe, tmp_path):
    exp = tracker.Experiment("a {{ age }} chief", name="keys", axes={"age": ["old"]}, seeds=[3],
                             scheduler="EulerDiscrete", steps=1)
    scheduler = pipe.scheduler
    first = tracker.run(exp, pipeline=pipe, home=tmp_path, mlflow=False, progress=False)
    assert pipe.scheduler is scheduler and type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert first.runs[0].recipe["scheduler"] == "EulerDiscreteScheduler"

    other = tiny_pipeline()
    with torch.no_grad():  # a fine-tune: same configs, one weight changed
        next(other.unet.parameters()).view(-1)[0] += 0.5
    second = tracker.run(exp, pipeline=other, home=tmp_path, mlflow=False, progress=False)
    assert second.done == 1 and second.runs[0].key != first.runs[0].key
    same = tracker.run(exp, pipeline=tiny_pipeline(), home=tmp_path, mlflow=False, progress=False)
    assert same.skipped == 1 and same.runs.keys == first.runs.keys  # an equal pipeline resumes


def test_pipeline_refuses_a_model_axis(pipe, tmp_path):
    exp = tracker.Experiment("a chief", name="models", model=["tiny", "shapes"], seeds=[0])
    with pytest.raises(TrackerError, match="varies model"):
        tracker.run(exp, pipeline=pipe, home=tmp_path, mlflow=False, progress=False)
    with pytest.raises(TrackerError, match="takes a diffusers pipeline object"):
        tracker.run(exp, pipeline="tiny", home=tmp_path, mlflow=False, progress=False)
