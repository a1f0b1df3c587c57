"""The ``compile`` setting (tracker/engine/speed.py): parsing, performance-only keys, clear errors, and a real
torch.compile (inductor on this CPU) of the tiny model with warm-up timed apart."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tracker.experiment import plan, parse as spec
from tracker.experiment.settings import compile_options

BASE = """\
name: fast
model: tiny
prompt: "a {{ colour }} square"
axes:
  colour: [red]
seeds: [0]
steps: 2
"""


def _keys(text: str) -> list[str]:
    return [r.key for r in plan.expand(spec.parse(text, "fast.yaml")).runs]


def test_compile_values_normalize():
    parse = lambda v: spec.parse(BASE + f"compile: {v}\n", "fast.yaml").settings.compile  # noqa: E731
    assert parse("false") == "off"
    assert parse("true") == "mode=default"
    assert parse("{mode: max-autotune-no-cudagraphs, fullgraph: true}") == \
        "fullgraph=true,mode=max-autotune-no-cudagraphs"
    assert compile_options("dynamic=false,mode=default") == {"dynamic": False, "mode": "default"}


@pytest.mark.parametrize("value, message", [
    ("{mode: fastest}", "mode must be one of default"),
    ("{fullgrap: true}", "unknown option 'fullgrap' (did you mean 'fullgraph'?)"),
    ("yes please", "must be true, false or a mapping"),
])
def test_bad_compile_value_is_one_line(cli, write_yaml, value, message):
    res = cli("expand", write_yaml(BASE + f"compile: {value}\n"))
    assert res.code == 2 and message in res.err and "compile" in res.err and len(res.err.strip().splitlines()) == 1


def test_compile_is_performance_only_unless_on_an_axis():
    assert _keys(BASE + "compile: true\n") == _keys(BASE)
    on_axis = _keys(BASE + "compile: [false, true]\n")
    assert len(set(on_axis)) == 2 and _keys(BASE)[0] not in on_axis


def test_compile_without_a_cpp_compiler_is_one_line(cli, write_yaml, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "no-compilers-here"))
    monkeypatch.delenv("CXX", raising=False)
    res = cli("run", write_yaml(BASE + "compile: true\ndevice: cpu\n"), "--no-mlflow", "-q")
    assert res.code == 2 and "needs a C++ compiler" in res.err and "compile: false" in res.err
    assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1


@pytest.mark.slow
def _one_block_model(folder):
    """The built-in ``tiny`` pipeline with a one-block UNet and a one-block VAE (random weights): inductor on
    this CPU compiles it in about half the time of ``tiny`` (41 s instead of 71-82 s in this suite on 2 cores)."""
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tracker.experiment.model_refs import builtin_path

    shutil.copytree(builtin_path("tiny"), folder)
    unet = dict(UNet2DConditionModel.load_config(folder / "unet"), block_out_channels=[32], mid_block_type=None,
                down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"])
    vae = dict(AutoencoderKL.load_config(folder / "vae"), block_out_channels=[16], mid_block_add_attention=False,
               down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"])
    UNet2DConditionModel.from_config(unet).save_pretrained(folder / "unet")
    AutoencoderKL.from_config(vae).save_pretrained(folder / "vae")
    return folder


def test_compile_true_on_cpu_makes_images_and_times_warmup_apart(cli, write_yaml, tmp_path):
    model = _one_block_model(tmp_path / "one-block")
    res = cli("run", write_yaml(BASE.replace("model: tiny", f"model: {model}") + "compile: true\ndevice: cpu\n"),
              "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert "1 done" in res.out and "compile warm-up" in res.out
    home = tmp_path / "home"
    with sqlite3.connect(home / "tracker.db") as conn:
        warmup, = conn.execute("select warmup_seconds from sweeps").fetchone()
        compiled, seconds, image = conn.execute("select compile, seconds, image_path from runs").fetchone()
    assert compiled == "mode=default" and warmup > 0 and seconds > 0
    assert any((home / "cache" / "inductor").iterdir())  # compiled artefacts cached in the workspace
    res = cli("show", json.loads(cli("runs", "fast", "--json").out)[0]["key"], "--json")
    assert json.loads(res.out)["compile"] == "mode=default"
