"""The engine on the real embedded tiny pipeline (CPU, 64x64, a few steps).

One Engine for the module: loading happens once, as in a real sweep, and every test goes through
``prepare``/``generate`` the way the runner does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: E402 -- a required dependency: a missing torch must fail, not skip

from tracker.experiment import plan, schedulers, parse as spec# noqa: E402
from tracker.engine.batches import NAN_ERROR, OutOfMemory  # noqa: E402
from tracker.engine.core import Engine  # noqa: E402
from tracker.errors import ModelError  # noqa: E402
from tracker.experiment import families  # noqa: E402
from tracker.experiment.model_refs import builtin_path  # noqa: E402
from tracker.experiment.settings import Settings  # noqa: E402

from conftest import REPO  # noqa: E402

PROMPT = "portrait photo of a old warrior chief"
BASE = Settings(model="tiny", steps=3, width=64, height=64, guidance_scale=7.5, device="cpu")


def runs_for(settings: Settings, seeds, prompts=None, negative: str = "") -> list[plan.PlannedRun]:
    prompts = prompts or [PROMPT] * len(seeds)
    return [plan.PlannedRun(key=plan.run_key(settings, s, p, negative), index=i, experiment="engine-test",
                            axes=(("seed", str(s)),), prompt=p, negative_prompt=negative, prompt_template=p,
                            negative_template=negative, seed=s, settings=settings)
            for i, (s, p) in enumerate(zip(seeds, prompts))]


def pixels(result) -> np.ndarray:
    assert result.error is None and result.image is not None, result.error
    return np.asarray(result.image, dtype=np.int16)


def one(engine: Engine, settings: Settings, seed: int = 0) -> np.ndarray:
    return pixels(engine.generate(runs_for(settings, [seed])).images[0])


@pytest.fixture(scope="module")
def engine():
    # One thread: on these shared 2-core machines two threads contend and run tens of times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine()
    torch.set_num_threads(threads)


def test_tiny_model_native_size_and_safetensors_only():
    folder = builtin_path("tiny")
    assert families.facts_for("tiny").native_size == (64, 64)
    weights = sorted(p.name for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt"))
    assert weights and all(w.endswith(".safetensors") for w in weights)
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 8_000_000


@pytest.mark.parametrize("cls", schedulers.SCHEDULERS)
def test_every_scheduler_makes_an_image_of_the_right_size(engine, cls):
    settings = replace(BASE, scheduler=cls, steps=4, width=48, height=64)
    batch = engine.generate(runs_for(settings, [7, 8]))
    img = batch.images[1]
    assert img.error is None and img.image.size == (48, 64) and img.image.mode == "RGB"
    alone = engine.generate(runs_for(settings, [8])).images[0]
    assert np.abs(pixels(alone) - pixels(img)).max() <= 1  # see the batch-of-4 test for this tolerance
    assert engine.scheduler_config()["_class_name"] == cls
    # one entry per denoising-loop iteration: 4 for most, 2*4-1 for second-order ones (Heun, KDPM2), 4+1 for PNDM
    assert len(batch.step_seconds) == len(engine._active.pipe.scheduler.timesteps) >= 4


def test_default_scheduler_is_the_checkpoints_own(engine):
    engine.prepare(BASE)
    cfg = engine.scheduler_config()
    saved = json.loads((builtin_path("tiny") / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == saved["_class_name"] == "PNDMScheduler"
    assert cfg["skip_prk_steps"] is True and cfg["steps_offset"] == 1


def test_a1111_alias_becomes_class_with_karras_sigmas(engine, write_yaml):
    path = write_yaml(f"""\
        model: tiny
        prompt: "{PROMPT}"
        scheduler: ["DPM++ 2M Karras", "Euler a", "DPM++ 2M"]
        steps: 3
        seeds: [1]
        """)
    runs = plan.expand(spec.parse_file(path)).runs
    seen = {}
    for run in runs:
        engine.generate([run])
        cfg = engine.scheduler_config()
        seen[run.labels["scheduler"]] = (cfg["_class_name"], cfg.get("use_karras_sigmas"))
    assert seen == {
        "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", True),
        "Euler a": ("EulerAncestralDiscreteScheduler", None),  # it has no Karras option at all
        "DPM++ 2M": ("DPMSolverMultistepScheduler", False),
    }


def test_scheduler_swaps_never_reload_the_model(engine):
    engine.prepare(BASE)
    pipes = dict(engine.pipelines.pipes)
    for cls in ("EulerDiscreteScheduler", "DDIMScheduler", "default"):
        engine.prepare(replace(BASE, scheduler=cls))
    assert engine.pipelines.pipes == pipes and len(pipes) == 1


def test_unknown_scheduler_option_names_it_and_lists_accepted(engine):
    settings = replace(BASE, scheduler="DDIMScheduler", scheduler_options=(("use_karras_sigmas", True),))
    with pytest.raises(ModelError) as err:
        engine.prepare(settings)
    msg = str(err.value)
    assert "DDIMScheduler does not accept 'use_karras_sigmas'" in msg and "clip_sample" in msg and "\n" not in msg
    with pytest.raises(ModelError, match="algorithm_type"):
        engine.prepare(replace(BASE, scheduler="DPMSolverMultistepScheduler",
                               scheduler_options=(("algorithm_type", "no-such-algorithm"),)))
    # a failed prepare leaves the engine usable
    assert engine.generate(runs_for(BASE, [0])).images[0].error is None


def test_scheduler_options_change_the_image(engine):
    plain = replace(BASE, scheduler="EulerDiscreteScheduler", steps=4)
    karras = replace(plain, scheduler_options=(("use_karras_sigmas", True),))
    assert not np.array_equal(one(engine, plain), one(engine, karras))


def test_same_call_twice_is_bit_identical(engine):
    settings = replace(BASE, scheduler="EulerAncestralDiscreteScheduler")  # stochastic sampler: uses the generator
    runs = runs_for(settings, [3, 4])
    a = engine.generate(runs)
    b = engine.generate(runs)
    for x, y in zip(a.images, b.images):
        assert np.array_equal(pixels(x), pixels(y))
    assert not np.array_equal(pixels(a.images[0]), pixels(a.images[1]))  # different seeds differ


def test_image_made_alone_matches_the_same_run_in_a_batch_of_4(engine):
    settings = replace(BASE, scheduler="DPMSolverMultistepScheduler", steps=4)
    prompts = [PROMPT, "a young warrior", "the oldest warrior chief", "a red cube"]
    batch = engine.generate(runs_for(settings, [10, 11, 12, 13], prompts))
    assert batch.batch_size == 4 and len(batch.images) == 4
    for i, (seed, prompt) in enumerate(zip([10, 11, 12, 13], prompts)):
        alone = pixels(engine.generate(runs_for(settings, [seed], [prompt])).images[0])
        # Measured (all 13 schedulers, 20 steps, 64x64): float differences ~1e-6 because batched matmuls
        # sum in another order; after 8-bit rounding at most 3 of the 12288 values move, by one level.
        # One generator per image keeps each image's noise its own.
        diff = np.abs(alone - pixels(batch.images[i]))
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 12


def test_negative_prompt_changes_the_image(engine):
    a = pixels(engine.generate(runs_for(BASE, [5])).images[0])
    b = pixels(engine.generate(runs_for(BASE, [5], negative="blurry, low quality")).images[0])
    assert not np.array_equal(a, b)


def _save_vae(folder: Path, seed: int, poison: bool = False) -> Path:
    """A VAE with the tiny model's architecture but other weights (``poison``: NaN weights)."""
    from diffusers import AutoencoderKL

    config = json.loads((builtin_path("tiny") / "vae" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    if poison:
        with torch.no_grad():
            vae.decoder.conv_out.bias.fill_(float("nan"))
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def test_vae_swap_changes_pixels_and_default_restores_them(engine, tmp_path):
    original = one(engine, BASE)
    other = replace(BASE, vae=str(_save_vae(tmp_path / "other-vae", seed=123)))
    swapped = one(engine, other)
    assert swapped.shape == original.shape and not np.array_equal(swapped, original)
    assert np.array_equal(one(engine, BASE), original)
    assert np.array_equal(one(engine, other), swapped)  # the extra VAE is cached, not reloaded differently
    # a whole pipeline folder as vae: its vae/ subfolder (here the tiny model's own VAE) is used
    assert np.array_equal(one(engine, replace(BASE, vae=str(builtin_path("tiny")))), original)


def test_nan_output_is_reported_per_image(engine, tmp_path):
    settings = replace(BASE, vae=str(_save_vae(tmp_path / "nan-vae", seed=1, poison=True)))
    batch = engine.generate(runs_for(settings, [0, 1]))
    assert [(r.image, r.error) for r in batch.images] == [(None, NAN_ERROR), (None, NAN_ERROR)]
    assert one(engine, BASE).shape == (64, 64, 3)  # back to normal


def test_memory_options_apply_and_revert(engine):
    original = one(engine, BASE)
    on = replace(BASE, attention_slicing=True, vae_slicing=True, vae_tiling=True)
    sliced = one(engine, on)
    pipe = engine._active.pipe
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert any("Sliced" in type(p).__name__ for p in pipe.unet.attn_processors.values())
    assert np.abs(sliced - original).max() <= 1  # slicing changes floats by ~1e-6 at most
    assert np.array_equal(one(engine, BASE), original)
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling
    assert not any("Sliced" in type(p).__name__ for p in pipe.unet.attn_processors.values())


def test_step_times_wall_time_and_peak_memory_are_positive(engine):
    settings = replace(BASE, steps=4, scheduler="EulerDiscreteScheduler")
    batch = engine.generate(runs_for(settings, [0, 1]))
    assert batch.seconds > 0 and batch.peak_memory_bytes > 0 and batch.batch_size == 2
    assert len(batch.step_seconds) == 4 and all(s > 0 for s in batch.step_seconds)
    for r in batch.images:
        assert r.seconds == pytest.approx(batch.seconds / 2)
        assert r.seconds_per_step == pytest.approx(sum(batch.step_seconds) / 4 / 2)


def test_missing_local_model_is_one_clear_line(engine, tmp_path):
    with pytest.raises(ModelError) as err:
        engine.prepare(replace(BASE, model=str(tmp_path / "no-such-model")))
    msg = str(err.value)
    assert "local folder" in msg and "no-such-model" in msg and "save_pretrained" in msg and "\n" not in msg


def test_made_up_hub_id_offline_says_how_to_fix(engine, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        engine.prepare(replace(BASE, model="prompt-tracker-tests/no-such-model"))
    msg = str(err.value)
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in msg
    assert "download prompt-tracker-tests/no-such-model" in msg and "local folder" in msg and "\n" not in msg
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        engine.prepare(replace(BASE, vae="prompt-tracker-tests/no-such-vae"))
    assert engine.model_revision("prompt-tracker-tests/no-such-model") is None


def test_pickle_weights_need_allow_pickle(engine, tmp_path):
    original = one(engine, BASE)
    folder = tmp_path / "tiny-bin"
    engine._active.pipe.save_pretrained(folder, safe_serialization=False)
    assert list(folder.glob("unet/*.bin"))
    with pytest.raises(ModelError) as err:
        engine.prepare(replace(BASE, model=str(folder)))
    assert "pickle" in str(err.value) and "allow_pickle: true" in str(err.value)
    # allowed on request: same weights, same pixels
    assert np.array_equal(one(engine, replace(BASE, model=str(folder), allow_pickle=True)), original)


def test_dtype_and_device_checks(engine, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="'cuda' is not available"):
            engine.prepare(replace(BASE, device="cuda"))
        with pytest.raises(ModelError, match="cpu_offload needs a CUDA GPU"):
            engine.prepare(replace(BASE, cpu_offload=True))
        assert Engine().device_for(replace(BASE, device="auto")) == "cpu"
    assert Engine(device="cpu").device_for(replace(BASE, device="cuda")) == "cpu"  # the CLI override wins

    def broken_matmul(*a, **k):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')

    fresh = Engine(device="cpu")
    monkeypatch.setattr(torch.Tensor, "__matmul__", broken_matmul)  # fault: a device without half kernels
    with pytest.raises(ModelError, match="dtype float16 cannot run on device 'cpu'.*float32"):
        fresh.prepare(replace(BASE, dtype="float16"))


def test_out_of_memory_becomes_OutOfMemory(engine, monkeypatch):
    engine.prepare(BASE)
    unet = engine._active.pipe.unet

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(unet, "forward", oom)  # fault injection
    with pytest.raises(OutOfMemory, match="out of memory"):
        engine.generate(runs_for(BASE, [0]))
    monkeypatch.undo()
    assert engine.generate(runs_for(BASE, [0])).images[0].error is None


def test_model_revision_hashes_folders(engine, tmp_path):
    rev = engine.model_revision("tiny")
    assert rev.startswith("sha256:") and len(rev) == len("sha256:") + 64
    assert engine.model_revision("tiny") == rev
    folder = _save_vae(tmp_path / "v", seed=2)
    a = engine.model_revision(str(folder))
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert engine.model_revision(str(folder)) != a


def test_environment_names_versions_and_device(engine):
    env = engine.environment()
    for k in ("python", "platform", "torch", "diffusers", "transformers", "device", "device_name", "cuda"):
        assert k in env
    assert env["torch"] == torch.__version__ and env["device_name"]
    if not torch.cuda.is_available():
        assert env["device"] == "cpu" and env["cuda"] is None


def test_generate_refuses_mixed_settings(engine):
    with pytest.raises(ValueError):
        engine.generate(runs_for(BASE, [0]) + runs_for(replace(BASE, steps=2), [1]))


def test_models_command_lists_builtins_without_torch(cli):
    res = cli("models", "--json")
    assert res.code == 0, res.err
    rows = {r["name"]: r for r in json.loads(res.out)}
    assert rows["tiny"]["installed"] and rows["tiny"]["default"] and rows["tiny"]["native_size"] == "64x64"
    assert Path(rows["tiny"]["path"]) == builtin_path("tiny")
    res = cli("models")
    assert res.code == 0 and "tiny (default)" in res.out
    code = ("import sys; from tracker.cli import main\n"
            "try: main(['models'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tiny" in proc.stdout


def test_build_tiny_model_is_deterministic(tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import build_tiny_model
    finally:
        sys.path.remove(str(REPO / "tools"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        built = build_tiny_model.build(tmp_path / "tiny")
    finally:
        torch.set_num_threads(threads)
    assert built == build_tiny_model.digest(builtin_path("tiny"))


HUB_SCRIPT = """
import hashlib, json, sys
import numpy as np, torch
torch.set_num_threads(1)
from dataclasses import replace
from tracker.engine.core import Engine
from tracker.experiment.settings import Settings
sys.path.insert(0, sys.argv[1])
from test_engine import BASE, one
e = Engine()
hub = one(e, replace(BASE, model="tracker-tests/tiny-copy"))
builtin = one(e, BASE)
print(json.dumps({"revision": e.model_revision("tracker-tests/tiny-copy"), "same": bool(np.array_equal(hub, builtin))}))
"""


def test_hub_id_loads_from_the_hf_cache_offline_with_its_commit_as_revision(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tracker-tests--tiny-copy"
    shutil.copytree(builtin_path("tiny"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(REPO / "tests")], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"revision": commit, "same": True}


def test_plain_pipeline_gives_the_engines_pixels(engine):
    """The engine adds nothing to the pixels: plain diffusers, loaded by itself, makes the same image."""
    from diffusers import DiffusionPipeline

    from tracker.experiment.model_refs import builtin_path

    settings = replace(BASE, scheduler="default", steps=3)
    pipe = DiffusionPipeline.from_pretrained(str(builtin_path("tiny")), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=[PROMPT], num_inference_steps=3, guidance_scale=7.5, width=64, height=64,
               generator=[torch.Generator("cpu").manual_seed(9)])
    plain = np.asarray(out.images[0], dtype=np.int16)
    assert np.array_equal(plain, one(engine, settings, seed=9))


def test_peak_memory_sees_a_transient_allocation_inside_the_batch():
    """The peak is the batch's own: memory taken and freed inside the window counts, earlier peaks don't."""
    from tracker.engine.machine import _PeakRss, _rss_bytes

    big = bytearray(256 * 1024 * 1024)  # an earlier peak, freed before the window opens
    del big
    with _PeakRss() as quiet:
        pass
    base = _rss_bytes()
    with _PeakRss() as busy:
        block = bytearray(200 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
        del block
    assert busy.peak >= base + 150 * 1024 * 1024
    assert quiet.peak < base + 150 * 1024 * 1024


def test_ddim_eta_reaches_the_scheduler_and_matches_plain_diffusers(engine):
    """``call: {eta: ...}`` reaches DDIM's ``step``: the pipeline passes ``eta`` only to a ``step`` whose signature
    names it, so the engine's seeding wrapper must keep that signature (it once hid it: eta was dropped)."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    ddim = replace(BASE, scheduler="DDIMScheduler", steps=4)
    noisy = replace(ddim, call=(("eta", 0.8),))
    quiet, stochastic = one(engine, ddim, seed=6), one(engine, noisy, seed=6)
    assert np.abs(quiet - stochastic).max() > 10
    pipe = DiffusionPipeline.from_pretrained(str(builtin_path("tiny")), local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=[PROMPT], num_inference_steps=4, guidance_scale=7.5, width=64, height=64, eta=0.8,
               generator=[torch.Generator("cpu").manual_seed(6)])
    assert np.abs(np.asarray(out.images[0], dtype=np.int16) - stochastic).max() <= 2


def test_dpm_sde_without_torchsde_is_refused_in_one_line(monkeypatch):
    """DPMSolverSDE needs the optional torchsde (in the test extra): where it is missing (the fault injected by
    hiding it from ``find_spec``), preparing the scheduler is one ModelError naming the package. A fresh engine:
    the shared one may hold the scheduler already."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchsde" else find_spec(name, *a))
    with pytest.raises(ModelError, match=r"needs the package torchsde.*pip install torchsde"):
        Engine().prepare(replace(BASE, scheduler="DPMSolverSDEScheduler", steps=4))


def test_dpm_sde_seeds_each_images_brownian_noise_with_its_seed_as_plain_diffusers_does(engine):
    """DPM++ SDE draws its noise from torchsde Brownian trees, which diffusers seeds from torch's global generator
    unless ``noise_sampler_seed`` is given: the engine seeds each image's tree with that image's seed (as A1111
    does), so the image is the same alone or in a batch, twice in a row, and equals a plain diffusers call given
    ``noise_sampler_seed=[seed]``."""
    from diffusers import DiffusionPipeline, DPMSolverSDEScheduler

    sde = replace(BASE, scheduler="DPMSolverSDEScheduler", steps=4)
    torch.manual_seed(1)
    first = one(engine, sde, seed=11)
    torch.manual_seed(2)  # the global generator no longer matters
    assert np.abs(one(engine, sde, seed=11) - first).max() == 0
    batch = engine.generate(runs_for(sde, [10, 11]))
    assert np.abs(pixels(batch.images[1]) - first).max() <= 1
    pipe = DiffusionPipeline.from_pretrained(str(builtin_path("tiny")), local_files_only=True)
    pipe.scheduler = DPMSolverSDEScheduler.from_config(pipe.scheduler.config, noise_sampler_seed=[11])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=[PROMPT], num_inference_steps=4, guidance_scale=7.5, width=64, height=64,
               generator=[torch.Generator("cpu").manual_seed(11)])
    assert np.abs(np.asarray(out.images[0], dtype=np.int16) - first).max() <= 2
