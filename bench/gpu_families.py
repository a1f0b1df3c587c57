#!/usr/bin/env python3
"""SDXL- and Flux.1-size pipelines on a GPU: a plain diffusers loop against ``python -m tracker run``.

Nothing is downloaded. The pipelines are built with RANDOM weights from configs written out below (the
sizes of stabilityai/stable-diffusion-xl-base-1.0 and black-forest-labs/FLUX.1-dev: SDXL UNet 2.57 B
parameters, CLIP ViT-L and OpenCLIP bigG text encoders; Flux transformer 11.9 B, T5-XXL encoder 4.76 B,
CLIP ViT-L, a 16-channel VAE), directly on the device in the run's dtype, then saved with
``save_pretrained`` (safetensors) under --work. The CLIP tokenizer is a small byte-level one (the
gpu-bench's ``.gpu-bench/tokenizer``, else the built-in ``tiny`` model's); the T5 tokenizer is a small
Unigram one made with the ``tokenizers`` library. Compute per image is the real models' (the embedding
tables keep their real sizes; a lookup costs nothing).

For each family, within --budget seconds from the start (each step first checks the time left against its
estimate and is skipped, with the reason recorded, when it would not fit; a step that overruns is stopped
at the budget):
  1. worker process: build + save the model; then the plain loop: ``DiffusionPipeline.from_pretrained``,
     ``.to(device)``, the checkpoint's own scheduler, one untimed warm-up batch, then --n images in batches
     of --batch with one CPU ``torch.Generator`` per image (seeds 0..n-1, as the tracker groups them),
     ``output_type="np"``; peak memory from ``torch.cuda.max_memory_allocated`` (reset before the timed
     loop); PNGs converted as the tracker does (``VaeImageProcessor.numpy_to_pil``);
  2. ``python -m tracker --home H run EXP.yaml --no-mlflow -q`` on an experiment file written here with
     every setting explicit (model folder, steps, size, dtype, guidance, ``scheduler: default``, the seed
     list, batch size); then ``tracker runs EXP --json`` (times, the stored ``peak_memory_bytes``, images);
     a tracker failure is recorded as a line, not raised;
  3. pixels: every tracker PNG against the plain loop's PNG of its seed (max / mean absolute difference).
Flux goes second; with ``--flux-layers auto`` (default) it is full size (19 double + 38 single blocks)
when the estimate (calibrated by what SDXL measured) fits the time left, else the deepest version that
fits (N double + 2N single blocks). Model folders are deleted after their family unless --keep.

Writes OUT/results.json (after every step, so a stopped run still leaves what it measured) and
OUT/summary.md (the table), and prints the table.

    python bench/gpu_families.py --out OUT [--budget 200] [--families sdxl,flux] [--flux-layers auto|N]
        [--t5-layers 24] [--n 8] [--batch 2] [--steps 8] [--size 1024] [--work /tmp/gpu-families] [--keep]
    python bench/gpu_families.py --small --out OUT      # CPU dry run: tiny configs, 64 px, 2 steps, 2 images,
                                                        # float32 (tests/test_bench_gpu_families.py)

On the GPU machine ``bench/gpu_session.sh`` runs it after the gpu-bench (see that script).
Exit status: 0 when every step that ran finished (skips and tracker failures are findings, recorded),
1 when a step failed or timed out, 2 on bad arguments.
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "portrait photo of a old warrior chief"
SDXL_NEGATIVE = "blurry, low quality"  # explicit in both paths: "no negative" differs by tracker version
WARMUP_SEED = 1_000_000
MARKER = ".gpu-families"  # in --work: the folder is this script's (it deletes its model folders there)
RESERVE_S = 6  # kept for the final results and table
FAMILIES = ("sdxl", "flux")

# ------------------------------------------------------------------------------------------------- configs
# Real sizes: the diffusers/transformers config values of the public checkpoints' subfolders.
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
                 layer_norm_eps=1e-5)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, upcast_attention=False,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, scaling_factor=0.13025,
    force_upcast=True,
)
SDXL_SCHEDULER = dict(  # EulerDiscreteScheduler, as SDXL base ships it
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False, timestep_spacing="leading",
    steps_offset=1,
)
FLUX_TRANSFORMER = dict(  # FLUX.1-dev; num_layers / num_single_layers scaled by --flux-layers
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, sample_size=1024, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611,
    shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
    mid_block_add_attention=True,
)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, use_cache=False)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
FLUX_FULL_LAYERS, T5_FULL_LAYERS = 19, 24

# --small: the same components with tiny widths (CPU dry runs); vocab sizes follow the small tokenizers
SMALL = {
    "clip_l": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
    "clip_bigg": dict(hidden_size=64, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      projection_dim=64),
    "sdxl_unet": dict(sample_size=8, block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 2),
                      attention_head_dim=(2, 4, 4), cross_attention_dim=32 + 64, addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=6 * 8 + 64, norm_num_groups=8),
    "vae": dict(sample_size=64, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
    "flux": dict(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
    "t5": dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
}

# Parameters of the full-size components (counted on the meta device with diffusers 0.42.1 / transformers 5.25):
# what the time estimates scale with. Flux: base + per depth unit (1 double + 2 single blocks).
PARAMS = {"unet_sdxl": 2_567_463_684, "clip_l": 123_060_480, "clip_bigg": 694_659_840, "vae4": 83_653_863,
          "vae16": 83_819_683, "flux_base": 64_124_992, "flux_per_layer": 623_014_912,
          "t5_base": 131_602_432, "t5_per_layer": 192_946_176}

# Time model of a full-size run on one H200 (seconds; rough, on the slow side: torch 2.11 + CUDA 13, the
# gpu-bench's measurements for imports and loading). Refined by the first family's measurements.
PRIOR = {
    "import_s": 20.0,          # a fresh process: python, torch, diffusers, CUDA context
    "tracker_start_s": 8.0,    # the tracker's CLI, store, plan, on top of import_s
    "write_bytes_per_s": 1.0e9,  # build: init on the GPU, to the CPU, safetensors written
    "load_bytes_per_s": 1.5e9,   # from_pretrained (page cache) + .to(cuda)
    "sdxl_step_s": 0.06,       # one SDXL step at 1024x1024 with CFG (two UNet passes), per image
    "flux_step_s": 0.26,       # one FLUX.1-dev step at 1024x1024 (19 + 38 blocks), per image
    "decode_s": 0.12,          # VAE decode per 1024x1024 image
    "png_s": 0.2,              # PNG encode + write per 1024x1024 image (the tracker: metadata, fsync)
}
SAFETY = 1.2


def params_of(family: str, flux_layers: int = FLUX_FULL_LAYERS, t5_layers: int = T5_FULL_LAYERS) -> int:
    p = PARAMS
    if family == "sdxl":
        return p["unet_sdxl"] + p["clip_l"] + p["clip_bigg"] + p["vae4"]
    return (p["flux_base"] + flux_layers * p["flux_per_layer"] + p["t5_base"] + t5_layers * p["t5_per_layer"]
            + p["clip_l"] + p["vae16"])


def estimate(family: str, a: argparse.Namespace, flux_layers: int, calib: float = 1.0) -> dict[str, float]:
    """Seconds each phase of a family should take (full size on the GPU; --small: a CPU dry run's few seconds)."""
    if a.small:
        return {"build": 15.0, "plain": 15.0, "tracker": 25.0, "compare": 1.0}
    pr = PRIOR
    nbytes = 2 * params_of(family, flux_layers, a.t5_layers)
    area = (a.size / 1024) ** 2
    if family == "sdxl":
        step = pr["sdxl_step_s"] * area
    else:
        step = pr["flux_step_s"] * (0.04 + 0.96 * flux_layers / FLUX_FULL_LAYERS) * area
    per_image = a.steps * step + pr["decode_s"] * area
    gen = a.n * per_image
    warm = a.batch * per_image + 3.0  # one batch, plus CUDA/cuDNN first-call set-up
    load = nbytes / pr["load_bytes_per_s"]
    png = a.n * pr["png_s"] * area
    s = SAFETY * calib
    return {
        "build": s * (pr["import_s"] + 2.0 + nbytes / pr["write_bytes_per_s"]),
        "plain": s * (load + warm + gen + png),  # same process as the build: no second import
        "tracker": s * (pr["import_s"] + pr["tracker_start_s"] + load + warm + gen + png),
        "compare": 2.0 + 0.05 * a.n * area,
    }


# ------------------------------------------------------------------------------------------------- helpers

def left(a: argparse.Namespace) -> float:
    return a.budget - (time.time() - T0)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(f"[+{time.time() - T0:6.1f}s] {msg}", flush=True)


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


def run_logged(cmd: list[str], timeout: float, env: dict, tag: str, keep: int = 400,
               echo: bool = True) -> tuple[int, list[str], float]:
    """Run ``cmd`` in its own process group, echoing its output (stdout + stderr) prefixed with ``tag`` (unless
    ``echo`` is false); stop it (SIGTERM, then SIGKILL 5 s later) after ``timeout`` seconds. Returns (rc, its
    last ``keep`` lines, wall seconds); rc 124 when it was stopped."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            errors="replace", start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if len(lines) > keep:
                del lines[: len(lines) - keep]
            if echo:
                print(f"  {tag}| {line}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    stopped = False
    try:
        proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        stopped = True
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    reader.join(timeout=5)
    return (124 if stopped else proc.returncode), lines, time.time() - t0


# ------------------------------------------------------------------------------------------------- worker
# Runs in its own process (its GPU memory is all returned when it ends): build, save, then the plain loop.

def _tokenizers(small: bool, clip_dir: Path, t5_dir: Path, t5: bool):
    from transformers import CLIPTokenizer

    clip = CLIPTokenizer.from_pretrained(str(clip_dir))
    if not t5:
        return clip, None
    return clip, t5_tokenizer(t5_dir)


def t5_tokenizer(folder: Path):
    """A T5-style Unigram tokenizer made with the ``tokenizers`` library (Metaspace pieces, ``</s>`` appended):
    printable ASCII characters, ``▁``+character and ``▁``+word pieces for the words of the prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted({w for text in (PROMPT, SDXL_NEGATIVE) for w in re.findall(r"[a-z]+", text)})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [(chr(c), -8.0) for c in range(33, 127)]
    pieces += [("\u2581" + chr(c), -7.0) for c in range(33, 127)]
    pieces += [("\u2581" + w, -2.0) for w in words if len(w) > 1]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": 512, "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "extra_ids": 0}, indent=1))
    return T5TokenizerFast.from_pretrained(str(folder))


def build_pipeline(a: argparse.Namespace, device: str, dtype):
    """The family's pipeline with random weights, created on ``device`` in ``dtype`` (no float32 copy)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    small = a.small
    clip_tok, t5_tok = _tokenizers(small, Path(a.clip_tokenizer), Path(a.work) / f"{a.family}-t5-tokenizer",
                                   t5=a.family == "flux")

    def clip_cfg(base: dict, key: str) -> "CLIPTextConfig":
        cfg = {**base, **(SMALL[key] if small else {})}
        if small:
            cfg["vocab_size"] = len(clip_tok)
        return CLIPTextConfig(**cfg, bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                              pad_token_id=clip_tok.pad_token_id)

    def made(fn, seed: int):
        torch.manual_seed(a.seed + seed)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # parameters are created in the run's dtype, on the device
        try:
            with torch.device(device):
                module = fn()
        finally:
            torch.set_default_dtype(prev)
        return module.to(dtype=dtype).eval()

    if a.family == "sdxl":
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

        unet_cfg = {**SDXL_UNET, **(SMALL["sdxl_unet"] if small else {})}
        vae_cfg = {**SDXL_VAE, **(SMALL["vae"] if small else {})}
        unet = made(lambda: UNet2DConditionModel(**unet_cfg), 0)
        vae = made(lambda: AutoencoderKL(**vae_cfg), 1)
        te = made(lambda: CLIPTextModel(clip_cfg(CLIP_L, "clip_l")), 2)
        te2 = made(lambda: CLIPTextModelWithProjection(clip_cfg(CLIP_BIGG, "clip_bigg")), 3)
        sched = EulerDiscreteScheduler(**SDXL_SCHEDULER)
        return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=clip_tok,
                                         tokenizer_2=clip_tok, unet=unet, scheduler=sched,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tr_cfg = {**FLUX_TRANSFORMER, **(SMALL["flux"] if small else {})}
    tr_cfg.update(num_layers=a.flux_layers, num_single_layers=2 * a.flux_layers)
    vae_cfg = {**FLUX_VAE, **(SMALL["vae"] if small else {})}
    t5_cfg = {**T5_XXL, **(SMALL["t5"] if small else {}), "num_layers": a.t5_layers}
    if small:
        t5_cfg["vocab_size"] = len(t5_tok)
    transformer = made(lambda: FluxTransformer2DModel(**tr_cfg), 0)
    vae = made(lambda: AutoencoderKL(**vae_cfg), 1)
    te = made(lambda: CLIPTextModel(clip_cfg(CLIP_L, "clip_l")), 2)
    te2 = made(lambda: T5EncoderModel(T5Config(**t5_cfg, pad_token_id=t5_tok.pad_token_id,
                                               eos_token_id=t5_tok.eos_token_id, decoder_start_token_id=0)), 3)
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    return FluxPipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=clip_tok, text_encoder_2=te2,
                        tokenizer_2=t5_tok, transformer=transformer)


def call_kwargs(a: argparse.Namespace) -> dict:
    """What both paths pass to the pipeline besides prompts and generators (the tracker: from the YAML)."""
    kw = dict(num_inference_steps=a.steps, guidance_scale=a.guidance, height=a.size, width=a.size, output_type="np")
    return kw


def negative(a: argparse.Namespace) -> str | None:
    return (a.sdxl_negative or None) if a.family == "sdxl" else None


def worker(a: argparse.Namespace) -> int:
    out = Path(a.json)
    result: dict = {"family": a.family, "status": "started"}

    def dump() -> None:
        result["worker_wall_s"] = round(time.time() - T0, 3)
        write_json(out, result)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped at the budget: write what was measured
    try:
        return _worker(a, result, dump)
    except BaseException as e:  # noqa: BLE001 - recorded, then raised as usual
        result["error"] = f"{type(e).__name__}: {str(e).strip()[:1500]}"
        dump()
        raise


def _worker(a: argparse.Namespace, result: dict, dump) -> int:
    import gc
    import hashlib
    import platform

    t = time.time()
    import numpy as np
    import torch
    import diffusers
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.image_processor import VaeImageProcessor

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    result["import_s"] = round(time.time() - t, 3)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    cuda = device.startswith("cuda")
    dtype = getattr(torch, a.dtype)
    result["env"] = {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "device": device,
                     "device_name": torch.cuda.get_device_name() if cuda else platform.machine(),
                     "device_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                     if cuda else None, "torch_threads": torch.get_num_threads()}
    dump()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    folder = Path(a.model_dir)
    # -- build ------------------------------------------------------------------------------------------
    if not a.skip_build:
        est = estimate(a.family, a, a.flux_layers)
        need = 2 * params_of(a.family, a.flux_layers, a.t5_layers) if not a.small else 0
        free = shutil.disk_usage(folder.parent).free
        if need and free < need * 1.05 + 2**30:
            result["build"] = {"status": "skipped", "note": f"needs {need / 2**30:.1f} GiB on disk, "
                                                            f"{free / 2**30:.1f} GiB free at {folder.parent}"}
            result["status"] = "skipped"
            dump()
            return 0
        t = time.time()
        pipe = build_pipeline(a, device, dtype)
        sync()
        t_init = time.time() - t
        params = {name: sum(p.numel() for p in m.parameters()) for name, m in pipe.components.items()
                  if isinstance(m, torch.nn.Module)}
        t = time.time()
        for m in pipe.components.values():
            if isinstance(m, torch.nn.Module):
                m.to("cpu")
        t_move = time.time() - t
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        t = time.time()
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        t_save = time.time() - t
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        del pipe
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        result["build"] = {
            "status": "ok", "params": params, "params_total": sum(params.values()),
            "bytes_on_disk": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
            "init_s": round(t_init, 3), "to_cpu_s": round(t_move, 3), "save_s": round(t_save, 3),
            "estimate_s": round(est["build"], 1), "dtype": a.dtype, "flux_layers": a.flux_layers if a.family == "flux"
            else None, "t5_layers": a.t5_layers if a.family == "flux" else None,
        }
        result["build"]["seconds"] = round(t_init + t_move + t_save, 3)
        dump()
        print(json.dumps({"build": result["build"]}), flush=True)

    # -- plain loop -------------------------------------------------------------------------------------
    est = estimate(a.family, a, a.flux_layers)["plain"]
    room = a.deadline - time.time()
    if est > room:
        result["plain"] = {"status": "skipped", "note": f"needs ~{est:.0f} s, {room:.0f} s left"}
        result["status"] = "done"
        dump()
        return 0
    plain: dict = {"status": "loading", "estimate_s": round(est, 1)}
    result["plain"] = plain
    t_phase = time.time()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=dtype, use_safetensors=True, local_files_only=True)
    t_from = time.time() - t
    pipe = pipe.to(device)
    sync()
    plain.update(load_s=round(time.time() - t, 3), from_pretrained_s=round(t_from, 3),
                 pipeline=type(pipe).__name__, scheduler=type(pipe.scheduler).__name__)
    if cuda:
        plain["memory_after_load_bytes"] = int(torch.cuda.memory_allocated())
    pipe.set_progress_bar_config(disable=True)
    kw = call_kwargs(a)
    neg = negative(a)

    def generate(seeds: list[int]):
        gens = [torch.Generator(a.generator_device).manual_seed(s) for s in seeds]
        extra = {"negative_prompt": [neg] * len(seeds)} if neg is not None else {}
        images = pipe(prompt=[PROMPT] * len(seeds), generator=gens, **extra, **kw).images
        sync()
        return np.asarray(images)

    plain["status"] = "warmup"
    dump()
    t = time.time()
    generate([WARMUP_SEED + i for i in range(a.batch)])
    plain["warmup_batch_s"] = round(time.time() - t, 3)
    plain["status"] = "generating"
    dump()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seeds = list(range(a.n))
    arrays: dict[int, object] = {}
    batch_s = []
    t_gen = time.time()
    for i in range(0, len(seeds), a.batch):
        chunk = seeds[i:i + a.batch]
        t = time.time()
        for s, arr in zip(chunk, generate(chunk)):
            arrays[s] = arr
        batch_s.append(round(time.time() - t, 4))
    gen = time.time() - t_gen
    plain.update({
        "images": len(seeds), "batch": a.batch, "generation_s": round(gen, 3), "batch_s": batch_s,
        "s_per_image": round(gen / len(seeds), 4), "images_per_s": round(len(seeds) / gen, 4),
        "s_per_image_steady": round(sorted(batch_s)[len(batch_s) // 2] / a.batch, 4),
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if cuda else _vm_hwm(),
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process VmHWM",
    })
    plain["status"] = "generated"
    dump()
    t = time.time()
    save_dir = Path(a.plain_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    nan, per_image = 0, {}
    for s in seeds:
        arr = arrays[s]
        if not np.isfinite(arr).all():
            nan += 1
        pil = VaeImageProcessor.numpy_to_pil(np.nan_to_num(arr)[None])[0]
        u8 = np.asarray(pil)
        per_image[str(s)] = {"sha256_pixels": hashlib.sha256(u8.tobytes()).hexdigest()[:16],
                             "mean": round(float(u8.mean()), 3), "std": round(float(u8.std()), 3)}
        pil.save(save_dir / f"seed-{s}.png")
    plain.update(nan_images=nan, save_png_s=round(time.time() - t, 3), per_image=per_image,
                 phase_s=round(time.time() - t_phase, 3), status="ok")
    result["status"] = "done"
    dump()
    summary = {k: plain.get(k) for k in ("load_s", "warmup_batch_s", "generation_s", "s_per_image", "images_per_s",
                                         "peak_memory_bytes", "nan_images")}
    print(json.dumps({"plain": summary}), flush=True)
    return 0


def _vm_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------------------------- tracker side

def experiment_yaml(a: argparse.Namespace, family: str, model: Path, name: str) -> str:
    """Every setting explicit: what the plain loop does, spelled for the tracker."""
    neg = a.sdxl_negative if family == "sdxl" and a.sdxl_negative else None
    lines = [
        f"# written by bench/gpu_families.py: the plain loop's workload ({family}), every setting explicit",
        f"name: {name}",
        f"model: {json.dumps(str(model))}",
        f"prompt: {json.dumps(PROMPT)}",
    ]
    if neg:
        lines.append(f"negative_prompt: {json.dumps(neg)}")
    lines += [
        f"seeds: [{', '.join(str(s) for s in range(a.n))}]",
        "scheduler: default",
        f"steps: {a.steps}",
        f"guidance_scale: {a.guidance_for[family]}",
        f"size: {a.size}x{a.size}",
        f"dtype: {a.dtype_for[family]}",
        f"device: {a.device}",
        f"generator_device: {a.generator_device}",
        f"batch_size: {a.batch}",
        "attention_slicing: false",
    ]
    return "\n".join(lines) + "\n"


def batches_of(runs: list[dict]) -> list[list[dict]]:
    """Done runs in the order made, cut into the tracker's batches (the runs of one batch share their start
    time, seconds, peak memory and batch size)."""
    out: list[list[dict]] = []
    same = ("started_at", "seconds", "peak_memory_bytes", "batch_size")
    for r in sorted(runs, key=lambda r: (r.get("started_at") or "", r.get("plan_index") or 0, r.get("seed") or 0)):
        if out and len(out[-1]) < (out[-1][0].get("batch_size") or 1) and all(r.get(k) == out[-1][0].get(k) for k in same):
            out[-1].append(r)
        else:
            out.append([r])
    return out


def summarize_runs(runs: list[dict]) -> dict:
    status: dict[str, int] = {}
    for r in runs:
        status[r["status"]] = status.get(r["status"], 0) + 1
    done = [r for r in runs if r["status"] == "done"]
    out: dict = {"runs": len(runs), "status": status,
                 "errors": sorted({first_line(r["error"]) for r in runs if r.get("error")})[:5]}
    if not done:
        return out
    secs = [r["seconds"] for r in done if r.get("seconds") is not None]
    mem = [r["peak_memory_bytes"] for r in done if r.get("peak_memory_bytes") is not None]
    bl = batches_of(done)
    steady = bl[1:] if len(bl) > 1 else bl
    n_steady = sum(len(b) for b in steady)
    out.update({
        "images_done": len(done), "pipeline_s": round(sum(secs), 3),
        "s_per_image": round(sum(secs) / len(secs), 4) if secs else None,
        "s_per_image_steady": round(sum(b[0]["seconds"] * len(b) for b in steady) / n_steady, 4) if n_steady else None,
        "first_batch_s": round(bl[0][0]["seconds"] * len(bl[0]), 3) if bl and bl[0][0].get("seconds") else None,
        "batch_s": [round((b[0].get("seconds") or 0) * len(b), 4) for b in bl],
        "peak_memory_bytes": max(mem) if mem else None,
        "batch_sizes": sorted({r.get("batch_size") for r in done}, key=str),
        "devices": sorted({str(r.get("device")) for r in done}),
    })
    return out


def compare_pixels(runs: list[dict], plain_dir: Path) -> dict:
    import numpy as np
    from PIL import Image

    rows, missing = [], []
    for r in sorted((r for r in runs if r["status"] == "done" and r.get("image")), key=lambda r: r["seed"]):
        p = plain_dir / f"seed-{r['seed']}.png"
        if not p.is_file() or not Path(r["image"]).is_file():
            missing.append(r["seed"])
            continue
        x = np.asarray(Image.open(r["image"]).convert("RGB"), dtype=np.int16)
        y = np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)
        if x.shape != y.shape:
            rows.append({"seed": r["seed"], "shape_tracker": list(x.shape), "shape_plain": list(y.shape)})
            continue
        d = np.abs(x - y)
        rows.append({"seed": r["seed"], "max_abs": int(d.max()), "mean_abs": round(float(d.mean()), 5),
                     "pixels_differing": int((d.max(axis=-1) > 0).sum())})
    valid = [x for x in rows if "max_abs" in x]
    return {"compared": len(valid), "missing_seeds": missing, "shape_mismatch": len(rows) - len(valid),
            "identical": sum(1 for x in valid if x["max_abs"] == 0),
            "max_abs": max((x["max_abs"] for x in valid), default=None),
            "mean_abs": round(sum(x["mean_abs"] for x in valid) / len(valid), 5) if valid else None,
            "per_seed": rows}


# ------------------------------------------------------------------------------------------------- orchestrator

class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.out = Path(a.out)
        self.work = Path(a.work)
        self.data: dict = {
            "meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0)), "budget_s": a.budget,
                     "small": a.small, "families": a.families, "n": a.n, "batch": a.batch, "steps": a.steps,
                     "size": a.size, "device": a.device, "dtype": a.dtype_for, "guidance": a.guidance_for,
                     "prompt": PROMPT, "sdxl_negative": a.sdxl_negative or None, "python": a.python,
                     "checkout": a.checkout},
            "steps": [], "families": {}, "rows": [],
        }
        self.failed = False
        self.calib = 1.0  # measured / estimated seconds of the first family: scales the next one's estimates

    # -- records ------------------------------------------------------------------------------------------
    def step(self, family: str, name: str, status: str, seconds: float, note: str = "") -> None:
        self.data["steps"].append({"family": family, "step": name, "status": status, "seconds": round(seconds, 2),
                                   "note": note})
        if status in ("FAILED", "TIMEOUT"):
            self.failed = True
        log(f"[{family}/{name}] {status} {seconds:.1f}s {note}")
        self.save()

    def fam(self, family: str) -> dict:
        return self.data["families"].setdefault(family, {})

    def save(self) -> None:
        self.data["meta"]["elapsed_s"] = round(time.time() - T0, 1)
        self.data["rows"] = self.rows()
        write_json(self.out / "results.json", self.data)
        (self.out / "summary.md").write_text(self.table() + "\n")

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([self.a.checkout] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1",
                   TOKENIZERS_PARALLELISM="false", MLFLOW_TRACKING_URI="",
                   HF_HOME=env.get("HF_HOME") or str(self.work / "hf-home"))
        if self.a.small:
            env.setdefault("OMP_NUM_THREADS", "1")  # a shared 2-core CPU: torch's spinning threads collapse
        return env

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> int:
        a = self.a
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / MARKER).touch()
        log(f"gpu_families: budget {a.budget:.0f}s, families {','.join(a.families)}, n {a.n} batch {a.batch} "
            f"steps {a.steps} size {a.size} device {a.device} small {a.small}; work {self.work}, out {self.out}")
        self.save()
        for family in a.families:
            try:
                self.family(family)
            except Exception as e:  # noqa: BLE001 - one family's bug must not lose the other's results
                self.step(family, "bench", "FAILED", 0.0, f"{type(e).__name__}: {e}")
        self.data["meta"]["elapsed_s"] = round(time.time() - T0, 1)
        self.save()
        print()
        print(self.table())
        return 1 if self.failed else 0

    def family(self, family: str) -> None:
        a = self.a
        f = self.fam(family)
        ns = argparse.Namespace(**vars(a))
        ns.family, ns.dtype, ns.guidance = family, a.dtype_for[family], a.guidance_for[family]
        model = self.work / f"{family}-model"
        plain_dir = self.work / f"{family}-plain"
        home = self.work / f"{family}-tracker"

        # flux depth: as given, or the deepest that fits the time left (full size first)
        layers = None
        if family == "flux":
            room = left(a) - RESERVE_S
            full = SMALL["flux"]["num_layers"] if a.small else FLUX_FULL_LAYERS
            if a.flux_layers == "auto":
                free = shutil.disk_usage(self.work).free

                def fits(n: int) -> bool:
                    disk_ok = a.small or 2 * params_of("flux", n, ns.t5_layers) * 1.05 + 2**30 <= free
                    return disk_ok and sum(estimate("flux", ns, n, self.calib).values()) <= room

                layers = next((n for n in range(full, 0, -1) if fits(n)), 1)
                f["flux_layers_choice"] = (f"auto: {layers} of {full} (estimate "
                                           f"{sum(estimate('flux', ns, layers, self.calib).values()):.0f} s, "
                                           f"{room:.0f} s left, calibration x{self.calib:.2f}; "
                                           f"{free / 2**30:.0f} GiB free on disk)")
            else:
                layers = int(a.flux_layers)
                f["flux_layers_choice"] = f"given: {layers}"
            ns.flux_layers = layers
            log(f"[flux] depth {layers} double + {2 * layers} single blocks; T5 layers {ns.t5_layers} "
                f"({f['flux_layers_choice']})")
        else:
            ns.flux_layers = None
        est = estimate(family, ns, layers or 1, self.calib)
        f["estimate_s"] = {k: round(v, 1) for k, v in est.items()}
        f["config"] = {"dtype": ns.dtype, "guidance_scale": ns.guidance, "flux_layers": layers,
                       "t5_layers": ns.t5_layers if family == "flux" else None,
                       "params_estimate": None if a.small else params_of(family, layers or 0, ns.t5_layers)}

        # 1. worker: build + plain loop
        need = est["build"] + est["plain"]
        room = left(a) - RESERVE_S
        if need > room:
            self.step(family, "build+plain", "SKIPPED", 0.0, f"needs ~{need:.0f} s, {room:.0f} s left")
            return
        for p in (model, plain_dir, home):
            shutil.rmtree(p, ignore_errors=True)
        wjson = self.work / f"{family}-worker.json"
        wjson.unlink(missing_ok=True)
        cmd = [a.python, str(Path(__file__).resolve()), "_worker", "--family", family, "--json", str(wjson),
               "--model-dir", str(model), "--plain-dir", str(plain_dir), "--deadline", f"{T0 + a.budget - RESERVE_S:.3f}",
               "--work", str(self.work), "--clip-tokenizer", a.clip_tokenizer, "--n", str(a.n),
               "--batch", str(a.batch), "--steps", str(a.steps), "--size", str(a.size), "--device", a.device,
               "--generator-device", a.generator_device, "--dtype", ns.dtype, "--guidance", str(ns.guidance),
               "--t5-layers", str(a.t5_layers), "--flux-layers", str(layers or 1), "--seed", str(a.seed),
               "--sdxl-negative", a.sdxl_negative]
        if a.small:
            cmd.append("--small")
        rc, lines, wall = run_logged(cmd, room, self.env(), f"{family}:worker")
        w = json.loads(wjson.read_text()) if wjson.is_file() else {}
        f["worker"] = {"rc": rc, "process_wall_s": round(wall, 2), "import_s": w.get("import_s"), "env": w.get("env"),
                       "error": w.get("error")}
        f["build"] = w.get("build", {})
        f["plain"] = w.get("plain", {})
        if w.get("env") and not self.data["meta"].get("env"):
            self.data["meta"]["env"] = w["env"]
        status = "ok" if rc == 0 else "TIMEOUT" if rc == 124 else "FAILED"
        b = f["build"]
        note = (f"build: {b.get('params_total', 0) / 1e6:.1f} M params, init {b.get('init_s')} s, to cpu "
                f"{b.get('to_cpu_s')} s, save {b.get('save_s')} s, {b.get('bytes_on_disk', 0) / 2**30:.2f} GiB"
                if b.get("status") == "ok" else f"build: {b.get('status', 'not reached')} {b.get('note', '')}")
        pl = f["plain"]
        note += (f"; plain: load {pl.get('load_s')} s, warm-up {pl.get('warmup_batch_s')} s, {pl.get('s_per_image')} "
                 f"s/img, peak {_mib(pl.get('peak_memory_bytes'))}" if pl.get("status") == "ok"
                 else f"; plain: {pl.get('status', 'not reached')} {pl.get('note', '')}")
        if rc != 0:
            note += f"; {w.get('error') or first_line(chr(10).join(lines[-3:]))}"
        self.step(family, "build+plain", status, wall, note)
        if b.get("status") != "ok" or not model.is_dir():
            return

        # 2. tracker run
        est = estimate(family, ns, layers or 1, self.calib)
        room = left(a) - RESERVE_S
        if est["tracker"] > room:
            self.step(family, "tracker_run", "SKIPPED", 0.0, f"needs ~{est['tracker']:.0f} s, {room:.0f} s left")
        else:
            self.tracker(family, ns, model, home, room)

        # 3. pixels
        runs = f.get("tracker_runs_raw") or []
        made = [r for r in runs if r["status"] == "done" and r.get("image")]
        if made and pl.get("status") == "ok":
            t = time.time()
            try:
                cmp = compare_pixels(runs, plain_dir)
                f["compare"] = cmp
                self.step(family, "compare", "ok", time.time() - t,
                          f"{cmp['identical']}/{cmp['compared']} identical, max abs {cmp['max_abs']}, "
                          f"mean abs {cmp['mean_abs']}" + (f", missing seeds {cmp['missing_seeds']}"
                                                           if cmp["missing_seeds"] else ""))
            except Exception as e:  # noqa: BLE001
                self.step(family, "compare", "FAILED", time.time() - t, f"{type(e).__name__}: {e}")
        else:
            self.step(family, "compare", "SKIPPED", 0.0,
                      "no tracker images" if not made else "no plain images")
        f.pop("tracker_runs_raw", None)

        # calibrate the next family's estimates with this one's measured seconds
        measured = f["worker"]["process_wall_s"] + (f.get("tracker", {}).get("process_wall_s") or 0)
        estimated = est["build"] + est["plain"] + (est["tracker"] if f.get("tracker", {}).get("process_wall_s") else 0)
        if not a.small and rc == 0 and estimated > 0:
            self.calib = min(3.0, max(0.6, SAFETY * measured / estimated * self.calib))
            f["calibration_after"] = round(self.calib, 3)
        if not a.keep:
            shutil.rmtree(model, ignore_errors=True)
            f["model_deleted"] = True
        self.save()

    def tracker(self, family: str, ns: argparse.Namespace, model: Path, home: Path, room: float) -> None:
        a = self.a
        f = self.fam(family)
        name = f"gf-{family}"
        yaml_path = self.work / f"{family}.yaml"
        yaml_path.write_text(experiment_yaml(ns, family, model, name))
        f["experiment_yaml"] = yaml_path.read_text()
        base = [a.python, "-m", "tracker", "--home", str(home)]
        rc, lines, wall = run_logged(base + ["run", str(yaml_path), "--no-mlflow", "-q"], room, self.env(),
                                     f"{family}:tracker")
        sweep = next((ln for ln in lines if re.match(rf"^{re.escape(name)}: \d+ done, ", ln)), None)
        m = re.search(r"in ([0-9.]+) s \(([0-9.]+) images/s\)", sweep or "")
        tr = {"rc": rc, "process_wall_s": round(wall, 2), "sweep_line": sweep,
              "sweep_s": float(m.group(1)) if m else None, "sweep_images_per_s": float(m.group(2)) if m else None,
              "output_tail": lines[-15:]}
        f["tracker"] = tr
        # what the store holds (also after a failure or a stop: the runs done so far)
        rrc, rlines, rwall = run_logged(base + ["runs", name, "--json"], max(5.0, min(60.0, left(a) - 1)),
                                        self.env(), f"{family}:runs", keep=1_000_000, echo=False) \
            if home.is_dir() else (1, ["no tracker home"], 0.0)
        runs: list[dict] = []
        if rrc == 0:
            try:
                runs = json.loads("\n".join(rlines))
            except ValueError as e:
                tr["runs_json_error"] = str(e)
        tr["runs"] = summarize_runs(runs) if runs else {"runs": 0}
        tr["runs_rc"] = rrc
        f["tracker_runs_raw"] = runs
        if rc == 0:
            status = "ok"
        elif rc == 124:
            status = "TIMEOUT"
        else:
            status = "TRACKER_FAILED"  # a finding about the tracker (recorded), not a bench failure
        err = "" if rc == 0 else (
            "; " + (next((ln.strip() for ln in reversed(lines) if ln.strip().lower().startswith(("error", "failed"))),
                         None) or first_line(lines[-1] if lines else ""))[:300])
        rs = tr["runs"]
        self.step(family, "tracker_run", status, wall,
                  f"{sweep or 'no sweep line'}; store: {rs.get('status')}, {rs.get('s_per_image')} s/img, steady "
                  f"{rs.get('s_per_image_steady')}, peak {_mib(rs.get('peak_memory_bytes'))}"
                  + (f", errors {rs.get('errors')}" if rs.get("errors") else "") + err
                  + (f" (runs --json rc {rrc} in {rwall:.1f}s)" if rrc else ""))
        if rs.get("errors") and status == "ok":
            tr["note"] = "runs with errors"

    # -- output --------------------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        rows = []
        for family, f in self.data["families"].items():
            pl, tr = f.get("plain") or {}, f.get("tracker") or {}
            rs, cmp = tr.get("runs") or {}, f.get("compare") or {}
            label = family + (f" ({f['config']['flux_layers']}/{FLUX_FULL_LAYERS if not self.a.small else 1} depth, "
                              f"T5 {f['config']['t5_layers']} layers)" if family == "flux" and f.get("config") else "")
            if pl:
                rows.append({"family": label, "path": "plain", "status": pl.get("status"),
                             "images": pl.get("images"), "batch": pl.get("batch"),
                             "s_per_image": pl.get("s_per_image"), "s_per_image_steady": pl.get("s_per_image_steady"),
                             "images_per_s": pl.get("images_per_s"),
                             "process_wall_s": None, "load_s": pl.get("load_s"),
                             "peak_memory_bytes": pl.get("peak_memory_bytes"), "pixels": "-",
                             "note": (f"NaN images {pl['nan_images']}" if pl.get("nan_images") else pl.get("note", ""))})
            if tr:
                st = rs.get("status") or {}
                ips = tr.get("sweep_images_per_s")
                rows.append({"family": label, "path": "tracker",
                             "status": "ok" if tr.get("rc") == 0 else f"rc {tr.get('rc')}",
                             "images": f"{st.get('done', 0)}/{rs.get('runs', 0)}", "batch": rs.get("batch_sizes"),
                             "s_per_image": rs.get("s_per_image"), "s_per_image_steady": rs.get("s_per_image_steady"),
                             "images_per_s": ips, "process_wall_s": tr.get("process_wall_s"), "load_s": None,
                             "peak_memory_bytes": rs.get("peak_memory_bytes"),
                             "pixels": (f"{cmp['identical']}/{cmp['compared']} identical, max {cmp['max_abs']}"
                                        if cmp.get("compared") else "not compared"),
                             "note": "; ".join(rs.get("errors") or []) or ("" if tr.get("rc") == 0 else
                                                                         first_line((tr.get("output_tail") or [""])[-1]))})
        return rows

    def table(self) -> str:
        m = self.data["meta"]
        env = m.get("env") or {}
        head = (f"gpu_families: {m.get('device_name') or env.get('device_name', '?')} ({env.get('device', '?')}), "
                f"torch {env.get('torch', '?')}, diffusers {env.get('diffusers', '?')}, transformers "
                f"{env.get('transformers', '?')}; {m['n']} images, batch {m['batch']}, {m['steps']} steps, "
                f"{m['size']}x{m['size']}; +{m.get('elapsed_s')} s of {m['budget_s']:.0f} s")
        out = [head, "",
               "| model | path | status | images | s/image | s/image steady | images/s | process s | load s "
               "| peak memory | pixels vs plain | note |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.data["rows"] or self.rows():
            out.append(f"| {r['family']} | {r['path']} | {r['status']} | {r['images']} | {_f(r['s_per_image'])} "
                       f"| {_f(r['s_per_image_steady'])} | {_f(r['images_per_s'], '{:.2f}')} "
                       f"| {_f(r['process_wall_s'], '{:.1f}')} | {_f(r['load_s'], '{:.1f}')} "
                       f"| {_mib(r['peak_memory_bytes'])} | {r['pixels']} | {str(r['note'] or '')[:160]} |")
        out += ["", "| family | step | status | seconds | note |", "|---|---|---|---|---|"]
        for s in self.data["steps"]:
            note = str(s["note"]).replace("|", "/")[:400]
            out.append(f"| {s['family']} | {s['step']} | {s['status']} | {s['seconds']:.1f} | {note} |")
        out.append("")
        out.append("s/image: the pipeline calls' seconds per image (plain: the timed loop after one warm-up batch; "
                   "tracker: the stored per-run seconds, first batch included; steady: without the first batch "
                   "(plain: median batch)); images/s: plain = timed loop, tracker = its sweep line (PNG writing "
                   "included); process s: the whole `tracker run` process; peak memory: CUDA max_memory_allocated "
                   "(tracker: the stored peak_memory_bytes; on CPU, process/batch RSS).")
        return "\n".join(out)


def _f(v, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mib(v) -> str:
    return "-" if not v else f"{v / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------------------- arguments

def parse(argv: list[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_worker":
        ap = argparse.ArgumentParser(prog="gpu_families.py _worker")
        for name in ("--family", "--json", "--model-dir", "--plain-dir", "--work", "--clip-tokenizer", "--device",
                     "--generator-device", "--dtype", "--sdxl-negative"):
            ap.add_argument(name, required=name not in ("--sdxl-negative",), default="")
        for name in ("--n", "--batch", "--steps", "--size", "--t5-layers", "--flux-layers", "--seed"):
            ap.add_argument(name, type=int, required=True)
        ap.add_argument("--guidance", type=float, required=True)
        ap.add_argument("--deadline", type=float, required=True)
        ap.add_argument("--small", action="store_true")
        ap.add_argument("--skip-build", action="store_true")
        a = ap.parse_args(argv[1:])
        a.mode = "worker"
        return a
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-families-out", help="results folder [$OUT]")
    ap.add_argument("--budget", type=float, default=200.0, help="seconds for everything, from the start [200]")
    ap.add_argument("--small", action="store_true",
                    help="CPU dry run: tiny configs, 64 px, 2 steps, 2 images, float32, device cpu")
    ap.add_argument("--families", default="sdxl,flux", help="comma-separated, in order [sdxl,flux]")
    ap.add_argument("--flux-layers", default="auto",
                    help="Flux depth N (N double + 2N single blocks; full: 19), or auto: the deepest that fits")
    ap.add_argument("--t5-layers", type=int, default=None, help="T5 encoder layers [24; --small: 2]")
    ap.add_argument("--n", type=int, default=None, help="images per path [8; --small: 2]")
    ap.add_argument("--batch", type=int, default=None, help="images per pipeline call [2]")
    ap.add_argument("--steps", type=int, default=None, help="[8; --small: 2]")
    ap.add_argument("--size", type=int, default=None, help="pixels, square [1024; --small: 64]")
    ap.add_argument("--device", default=None, help="auto | cuda | cpu [auto; --small: cpu]")
    ap.add_argument("--generator-device", default="cpu", help="torch.Generator device (the tracker's default: cpu)")
    ap.add_argument("--sdxl-dtype", default=None, help="[float16; --small: float32]")
    ap.add_argument("--flux-dtype", default=None, help="[bfloat16; --small: float32]")
    ap.add_argument("--sdxl-guidance", type=float, default=5.0)
    ap.add_argument("--flux-guidance", type=float, default=3.5, help="distilled guidance (FLUX.1-dev)")
    ap.add_argument("--sdxl-negative", default=SDXL_NEGATIVE,
                    help="SDXL's negative prompt, passed by both paths ('' for none) [%(default)s]")
    ap.add_argument("--work", default="/tmp/gpu-families", help="models, images, tracker homes [/tmp/gpu-families]")
    ap.add_argument("--clip-tokenizer", default=None,
                    help="CLIP tokenizer folder [.gpu-bench/tokenizer, else tracker/models/tiny/tokenizer]")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the worker and the tracker")
    ap.add_argument("--checkout", default=str(ROOT),
                    help="the project checkout whose tracker/ `python -m tracker` runs (first on PYTHONPATH) [this one]")
    ap.add_argument("--seed", type=int, default=0, help="weight init seed")
    ap.add_argument("--keep", action="store_true", help="keep the model folders")
    a = ap.parse_args(argv)
    a.mode = "main"
    small = a.small
    defaults = dict(t5_layers=2 if small else T5_FULL_LAYERS, n=2 if small else 8, batch=2, steps=2 if small else 8,
                    size=64 if small else 1024, device="cpu" if small else "auto")
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.dtype_for = {"sdxl": a.sdxl_dtype or ("float32" if small else "float16"),
                   "flux": a.flux_dtype or ("float32" if small else "bfloat16")}
    a.guidance_for = {"sdxl": a.sdxl_guidance, "flux": a.flux_guidance}
    a.families = [x.strip() for x in a.families.split(",") if x.strip()]
    bad = [x for x in a.families if x not in FAMILIES]
    errors = []
    if bad or not a.families:
        errors.append(f"--families: {','.join(bad) or '(none)'} is not one of {', '.join(FAMILIES)}")
    if a.flux_layers != "auto" and not (a.flux_layers.isdigit() and int(a.flux_layers) >= 1):
        errors.append(f"--flux-layers: must be auto or a positive integer, not {a.flux_layers!r}")
    for k in ("n", "batch", "steps", "size", "t5_layers"):
        if getattr(a, k) < 1:
            errors.append(f"--{k.replace('_', '-')}: must be at least 1, not {getattr(a, k)}")
    if a.size % 16:
        errors.append(f"--size: must be a multiple of 16, not {a.size}")
    if a.budget <= 0:
        errors.append(f"--budget: must be positive, not {a.budget}")
    for dt in a.dtype_for.values():
        if dt not in ("float32", "float16", "bfloat16"):
            errors.append(f"--sdxl-dtype/--flux-dtype: must be float32, float16 or bfloat16, not {dt!r}")
    if not (Path(a.checkout) / "tracker" / "__init__.py").is_file():
        errors.append(f"--checkout: {a.checkout} has no tracker/ package")
    if a.clip_tokenizer is None:
        for c in (ROOT / ".gpu-bench" / "tokenizer", ROOT / "tracker" / "models" / "tiny" / "tokenizer"):
            if (c / "tokenizer_config.json").is_file():
                a.clip_tokenizer = str(c)
                break
    if not a.clip_tokenizer or not (Path(a.clip_tokenizer) / "tokenizer_config.json").is_file():
        errors.append(f"--clip-tokenizer: no tokenizer_config.json in {a.clip_tokenizer}")
    work = Path(a.work)
    if work.is_dir() and any(work.iterdir()) and not (work / MARKER).is_file():
        errors.append(f"--work: {work} holds files this script did not write (no {MARKER} marker); "
                      f"name an empty or new folder")
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    a.out = str(Path(a.out).resolve())
    a.checkout = str(Path(a.checkout).resolve())
    a.work = str(work.resolve())
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.mode == "worker":
        return worker(a)
    return Bench(a).run()


if __name__ == "__main__":
    sys.exit(main())
