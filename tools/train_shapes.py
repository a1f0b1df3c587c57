#!/usr/bin/env python
"""Train the built-in ``shapes`` demo model (issue 7) and save it as a diffusers pipeline folder.

Two phases, both deterministic for a given --seed and resumable from checkpoints in --work:
  1. vae:  an AutoencoderKL (32x32 px -> 4x8x8 latents) learns to reconstruct the procedural shapes;
  2. unet: with the VAE frozen and a fixed dataset encoded once to latents, a UNet2DConditionModel
     (epsilon prediction, SD 1.x scaled_linear betas, 1000 timesteps, min-SNR weighting, 10% empty
     prompts for classifier-free guidance) and a tiny CLIPTextModel train together; EMA of both.
The tokenizer is built locally: every prompt word is one ``word</w>`` token, with a byte-level fallback.

Usage:
  python tools/train_shapes.py                      # train from scratch, save tracker/models/shapes
  python tools/train_shapes.py --resume             # continue from the last checkpoint in --work
  python tools/train_shapes.py --resume --export-only   # save the pipeline from the last checkpoint
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tracker.demo import shapes as S  # noqa: E402

MAX_LEN = 16


# ---------------------------------------------------------------- tokenizer

def build_tokenizer():
    """A CLIPTokenizer whose vocabulary has each prompt word as one ``word</w>`` token (byte-level fallback).

    Longest words first so their merge chains get the lowest ranks (applied first).
    """
    from tools.build_tiny_model import build_tokenizer as byte_level_tokenizer

    tok = byte_level_tokenizer(sorted(S.vocabulary(), key=lambda w: (-len(w), w)), MAX_LEN)
    vocab = tok.get_vocab()
    for word in S.vocabulary():
        ids = tok(word, add_special_tokens=False).input_ids
        assert ids == [vocab[word + "</w>"]], (word, ids, tok.convert_ids_to_tokens(ids))
    return tok


# ---------------------------------------------------------------- models

def make_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=S.SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
        scaling_factor=1.0,
    )


def make_text_encoder(tok):
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=MAX_LEN, projection_dim=32,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(cfg)


def make_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(
        sample_size=S.SIZE // 4, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=32, attention_head_dim=8,
    )


def train_scheduler_kwargs():
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", steps_offset=1, clip_sample=False, set_alpha_to_one=False)


# ---------------------------------------------------------------- data

def make_dataset(n: int, seed: int):
    rng = np.random.default_rng(seed)
    imgs = np.empty((n, 3, S.SIZE, S.SIZE), dtype=np.float32)
    labels = []
    for i in range(n):
        img, lab = S.sample(rng)
        imgs[i] = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        labels.append(lab)
    return torch.from_numpy(imgs), labels


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


# ---------------------------------------------------------------- checkpoints

def save_ckpt(path: Path, obj: dict):
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state():
    return {"torch": torch.get_rng_state(), "np": np.random.get_state(), "py": random.getstate()}


def set_rng_state(st):
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["np"])
    random.setstate(st["py"])


# ---------------------------------------------------------------- phases

def train_vae(args, device, work: Path):
    ck = work / "vae.pt"
    vae = make_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    if args.resume and ck.exists():
        st = torch.load(ck, map_location=device, weights_only=False)
        vae.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        set_rng_state(st["rng"])
        if step >= args.vae_steps:
            return vae
    data, _ = make_dataset(args.vae_data, args.seed + 1)
    g = torch.Generator().manual_seed(args.seed + 2 + step)
    vae.train()
    bar = tqdm(total=args.vae_steps, initial=step, desc="vae", mininterval=5)
    while step < args.vae_steps:
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.vae_lr, 100, args.vae_steps)
        idx = torch.randint(len(data), (args.vae_batch,), generator=g)
        x = data[idx].to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        rl = F.mse_loss(rec, x)
        kl = post.kl().mean() / (4 * (S.SIZE // 4) ** 2)
        loss = rl + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(rec=f"{rl.item():.4f}", kl=f"{kl.item():.2f}")
        if step % args.ckpt_every == 0 or step == args.vae_steps:
            save_ckpt(ck, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng_state()})
            print(f"[vae] step {step} rec {rl.item():.5f} kl {kl.item():.3f}", flush=True)
    bar.close()
    return vae


@torch.no_grad()
def encode_dataset(vae, args, device, work: Path, tok):
    cache = work / "latents.pt"
    if cache.exists():
        return torch.load(cache, weights_only=False)
    data, labels = make_dataset(args.unet_data, args.seed + 3)
    vae.eval()
    means, stds = [], []
    for i in range(0, len(data), 256):
        post = vae.encode(data[i:i + 256].to(device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = float(1.0 / mean.std())
    ids = tok([S.prompt(*lab) for lab in labels], padding="max_length", max_length=MAX_LEN,
              truncation=True, return_tensors="pt").input_ids
    obj = {"mean": mean, "std": std, "ids": ids, "scaling": scaling}
    torch.save(obj, cache)
    print(f"[latents] {tuple(mean.shape)} scaling_factor {scaling:.4f}", flush=True)
    return obj


def train_unet(args, device, work: Path, tok, lat):
    from diffusers import DDPMScheduler
    ck = work / "unet.pt"
    torch.manual_seed(args.seed + 4)
    unet = make_unet().to(device)
    te = make_text_encoder(tok).to(device)
    ema_u = make_unet().to(device).requires_grad_(False)
    ema_t = make_text_encoder(tok).to(device).requires_grad_(False)
    ema_u.load_state_dict(unet.state_dict())
    ema_t.load_state_dict(te.state_dict())
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    step = 0
    if args.resume and ck.exists():
        st = torch.load(ck, map_location=device, weights_only=False)
        unet.load_state_dict(st["unet"]); te.load_state_dict(st["te"])
        ema_u.load_state_dict(st["ema_u"]); ema_t.load_state_dict(st["ema_t"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        set_rng_state(st["rng"])
    noise_sched = DDPMScheduler(**{k: v for k, v in train_scheduler_kwargs().items() if k not in ("steps_offset", "set_alpha_to_one")})
    ac = noise_sched.alphas_cumprod.to(device)
    snr = ac / (1 - ac)
    mean, std, ids = lat["mean"], lat["std"], lat["ids"]
    scaling = lat["scaling"]
    empty = tok([""], padding="max_length", max_length=MAX_LEN, return_tensors="pt").input_ids[0]
    g = torch.Generator().manual_seed(args.seed + 5 + step)
    unet.train(); te.train()
    bar = tqdm(total=args.steps, initial=step, desc="unet", mininterval=10)
    t0 = time.time()
    run = 0.0
    while step < args.steps:
        if args.stop_file and Path(args.stop_file).exists():
            print("[unet] stop file found", flush=True)
            break
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.lr, args.warmup, args.steps)
        idx = torch.randint(len(mean), (args.batch,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling
        tid = ids[idx].clone()
        drop = torch.rand(args.batch, generator=g) < args.cfg_drop
        tid[drop] = empty
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        z0, tid, noise, t = z0.to(device), tid.to(device), noise.to(device), t.to(device)
        zt = noise_sched.add_noise(z0, noise, t)
        enc = te(tid).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=enc).sample
        w = torch.clamp(snr[t], max=args.snr_gamma) / snr[t]
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(list(ema_u.parameters()) + list(ema_t.parameters()), params):
                e.lerp_(p, 1 - d)
        run = loss.item() if run == 0 else 0.98 * run + 0.02 * loss.item()
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{run:.4f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt(ck, {"unet": unet.state_dict(), "te": te.state_dict(), "ema_u": ema_u.state_dict(),
                           "ema_t": ema_t.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng_state(),
                           "batch": args.batch, "lr": args.lr, "total_steps": args.steps})
            print(f"[unet] step {step} loss {run:.5f} {time.time() - t0:.0f}s", flush=True)
    bar.close()
    return ema_u, ema_t, step


# ---------------------------------------------------------------- export

def export(vae, unet, te, tok, scaling: float, out: Path, info: dict):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    vae.register_to_config(scaling_factor=scaling)
    sched = DPMSolverMultistepScheduler(**{k: v for k, v in train_scheduler_kwargs().items()
                                           if k not in ("clip_sample", "set_alpha_to_one")})
    pipe = StableDiffusionPipeline(vae=vae.cpu().eval(), text_encoder=te.cpu().eval(), tokenizer=tok,
                                   unet=unet.cpu().eval(), scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"[export] {out} {size / 1e6:.2f} MB", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "tracker" / "models" / "shapes"))
    ap.add_argument("--work", default=str(ROOT / ".train" / "shapes"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--vae-steps", type=int, default=450)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-data", type=int, default=8000)
    ap.add_argument("--kl-weight", type=float, default=1e-4)
    ap.add_argument("--unet-data", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=5500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--snr-gamma", type=float, default=5.0)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--stop-file", default=None, help="stop (and export) when this file appears")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
    device = torch.device(args.device)
    work = Path(args.work); work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tok = build_tokenizer()
    if args.export_only:
        args.resume = True
        args.vae_steps = 0 if not (work / "vae.pt").exists() else args.vae_steps
    vae = train_vae(args, device, work)
    vae.requires_grad_(False).eval()
    lat = encode_dataset(vae, args, device, work, tok)
    if args.export_only:
        args.steps = 0
    unet, te, step = train_unet(args, device, work, tok, lat)
    batch, lr = args.batch, args.lr
    if args.export_only:
        st = torch.load(work / "unet.pt", weights_only=False)
        step, batch, lr = st["step"], st.get("batch", batch), st.get("lr", lr)
    info = {"seed": args.seed, "unet_steps": step, "batch": batch, "lr": lr,
            "vae_steps": args.vae_steps, "params": {
                "unet": sum(p.numel() for p in unet.parameters()),
                "vae": sum(p.numel() for p in vae.parameters()),
                "text_encoder": sum(p.numel() for p in te.parameters())}}
    export(vae, unet, te, tok, lat["scaling"], Path(args.out), info)
    print(f"[done] {time.time() - t0:.0f}s {info}", flush=True)


if __name__ == "__main__":
    main()
