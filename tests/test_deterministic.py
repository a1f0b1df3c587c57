"""Issue 13: ``deterministic: true`` turns on torch's deterministic algorithms for the sweep's pipeline calls
(and only for them), is recorded per run (store, PNG recipe, MLflow params), honoured by verify/reproduce
(no "GPU kernels" allowance for such runs), and a bad value is one line, exit 2."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from tracker.images import pngmeta
from tracker.reproduce import verify as vf
from tracker.reproduce.regenerate import Drift

SWEEP = """\
name: det
model: tiny
prompt: "a {{ colour }} square"
axes:
  colour: [red, blue]
seeds: [3]
steps: 1
deterministic: true
"""


def test_the_setting_turns_torchs_deterministic_algorithms_on_for_the_call_only(monkeypatch):
    import torch

    from tracker.engine.core import Engine
    from tracker.experiment.settings import Settings

    from test_engine import runs_for

    base = Settings(model="tiny", steps=1, width=64, height=64, device="cpu")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # restored after the test
    engine = Engine(device="cpu")
    try:
        before = torch.are_deterministic_algorithms_enabled()
        on = engine.generate(runs_for(replace(base, deterministic=True), [1]))
        assert on.deterministic is True  # what torch reported during the pipeline call
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
        assert torch.are_deterministic_algorithms_enabled() == before  # restored after the call
        off = engine.generate(runs_for(base, [1]))
        assert off.deterministic is False
        assert (on.images[0].image.tobytes() == off.images[0].image.tobytes())  # the same image on CPU
    finally:
        engine.close()


def test_deterministic_is_recorded_per_run_and_verified_strictly(cli, write_yaml, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # the sweep sets it; restored after the test
    res = cli("run", write_yaml(SWEEP), "--no-mlflow", "-q")
    assert res.code == 0, res.err
    runs = json.loads(cli("runs", "det", "--json").out)
    assert [r["deterministic"] for r in runs] == [True, True]
    shown = json.loads(cli("show", runs[0]["key"], "--json").out)
    assert shown["deterministic"] is True
    _, recipe = pngmeta.read_png(runs[0]["image"])
    assert recipe["deterministic"] is True  # reproduce from the PNG takes it from there
    res = cli("verify", "det", "--sample", "2")
    assert res.code == 0 and "2 of 2 sampled runs identical" in res.out, res.out + res.err

    # no "GPU kernels" allowance for a run made deterministic: any difference is drift
    noise = Drift(False, 1, 0.001, 2, 4096)
    assert vf.verdict(noise, "cuda:0") == "within 1 levels (GPU kernels)"
    assert vf.verdict(noise, "cuda:0", deterministic=True) == "differs"


@pytest.mark.parametrize("value", ["maybe", "1", "'true'"])
def test_an_invalid_value_is_one_line_exit_2(cli, write_yaml, value):
    res = cli("run", write_yaml(SWEEP.replace("deterministic: true", f"deterministic: {value}")), "--no-mlflow", "-q")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err
    assert "exp.yaml" in lines[0] and "deterministic" in lines[0] and "must be true or false" in lines[0]
