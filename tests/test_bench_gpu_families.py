"""bench/gpu_families.py, the SDXL/Flux GPU benchmark, through its CPU dry run (``--small``: tiny configs of the
same pipeline classes, 64 px, 2 steps, 2 images, float32): every step it takes on the GPU (build and save, the
plain loop, the experiment file, ``tracker run``, ``tracker runs --json``, pixels, the tables) runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_families.py"


def bench(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


@pytest.mark.slow
def test_small_dry_run_compares_the_plain_loop_with_the_tracker(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    r = bench("--small", "--out", str(out), "--work", str(work), "--budget", "900", "--keep")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    rows = {(row["family"].split()[0], row["path"]): row for row in data["rows"]}
    assert set(rows) == {("sdxl", "plain"), ("sdxl", "tracker"), ("flux", "plain"), ("flux", "tracker")}
    for family in ("sdxl", "flux"):
        plain = data["families"][family]["plain"]
        assert plain["status"] == "ok" and plain["images"] == 2 and plain["nan_images"] == 0
        assert plain["peak_memory_bytes"] > 0 and plain["s_per_image"] > 0
        assert sorted(p.name for p in (work / f"{family}-plain").iterdir()) == ["seed-0.png", "seed-1.png"]
        build = data["families"][family]["build"]
        assert build["status"] == "ok" and build["params_total"] > 0
        assert (work / f"{family}-model" / "model_index.json").is_file()
    index = json.loads((work / "flux-model" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["tokenizer_2"] == ["transformers", "T5Tokenizer"]
    assert json.loads((work / "sdxl-model" / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"

    # SDXL: the tracker made both images from the experiment file written for it, the plain loop's pixels
    sdxl = data["families"]["sdxl"]
    for line in ("scheduler: default", "steps: 2", "size: 64x64", "dtype: float32", "seeds: [0, 1]", "batch_size: 2",
                 "guidance_scale: 5.0", 'negative_prompt: "blurry, low quality"'):
        assert line in sdxl["experiment_yaml"].splitlines()
    assert sdxl["tracker"]["rc"] == 0 and sdxl["tracker"]["runs"]["status"] == {"done": 2}
    assert sdxl["tracker"]["runs"]["peak_memory_bytes"] > 0 and sdxl["tracker"]["sweep_images_per_s"] > 0
    assert sdxl["compare"]["compared"] == 2 and sdxl["compare"]["max_abs"] <= 2
    assert rows[("sdxl", "tracker")]["pixels"] == f"{sdxl['compare']['identical']}/2 identical, max {sdxl['compare']['max_abs']}"

    # Flux: compared when this checkout's tracker runs Flux; else its failure is one recorded line, not a crash
    flux = data["families"]["flux"]
    assert "negative_prompt" not in flux["experiment_yaml"] and "dtype: float32" in flux["experiment_yaml"]
    step = next(s for s in data["steps"] if s["family"] == "flux" and s["step"] == "tracker_run")
    if flux["tracker"]["rc"] == 0:
        assert step["status"] == "ok" and flux["compare"]["compared"] == 2 and flux["compare"]["max_abs"] <= 2
    else:
        assert step["status"] == "TRACKER_FAILED" and rows[("flux", "tracker")]["note"], step

    summary = (out / "summary.md").read_text()
    assert "| sdxl | tracker | ok | 2/2 |" in summary and "| sdxl | plain | ok | 2 |" in summary


def test_a_budget_too_small_skips_each_step_with_its_reason(tmp_path):
    out = tmp_path / "out"
    r = bench("--small", "--out", str(out), "--work", str(tmp_path / "work"), "--budget", "10", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((out / "results.json").read_text())
    assert [(s["family"], s["step"], s["status"]) for s in data["steps"]] == [
        ("sdxl", "build+plain", "SKIPPED"), ("flux", "build+plain", "SKIPPED")]
    assert all(s["note"].startswith("needs ~30 s, ") and s["note"].endswith(" s left") for s in data["steps"])
    assert not (tmp_path / "work" / "sdxl-model").exists()
    assert "| sdxl | build+plain | SKIPPED |" in (out / "summary.md").read_text()


def test_bad_arguments_are_one_line_each_and_nothing_is_written(tmp_path):
    r = bench("--families", "sdxl,sd3", "--flux-layers", "0", "--out", str(tmp_path / "out"), timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: --families: sd3 is not one of sdxl, flux",
                                     "error: --flux-layers: must be auto or a positive integer, not '0'"]
    assert not (tmp_path / "out").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not the bench's")
    r = bench("--small", "--out", str(tmp_path / "out"), "--work", str(foreign), timeout=60)
    assert r.returncode == 2 and "--work:" in r.stderr and (foreign / "keep.txt").is_file()
