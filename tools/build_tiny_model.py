"""Build the embedded default model ``tiny``: a Stable Diffusion 1.x pipeline with random weights.

Why: tests, examples and first runs need a real diffusers pipeline that loads offline and generates a
64x64 image in well under a second on a CPU. The weights are random (images are near-grey noise) but
every code path is the real one: tokenizer, CLIP text encoder, UNet with cross-attention, a VAE and
an SD 1.x scheduler, saved in diffusers' folder layout as safetensors.

Deterministic: fixed init seed, no timestamps, so running it twice gives byte-identical files::

    .venv/bin/python tools/build_tiny_model.py            # writes tracker/models/tiny/
    .venv/bin/python tools/build_tiny_model.py --out DIR

Size: UNet sample_size 16 with a 3-block VAE (downsampling 4x) -> native size 64x64 px.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tracker" / "models" / "tiny"
SEED = 0
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LEN = 77  # CLIP's context length, as in SD 1.x
LATENT = 16  # UNet sample_size; x4 from the VAE -> 64 px
# A few common English merges, so typical prompts take fewer tokens than one per byte.
MERGE_WORDS = ("the", "a", "of", "and", "in", "photo", "portrait", "old", "young")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (every byte gets a vocabulary entry)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(words: tuple[str, ...] | list[str] = MERGE_WORDS, max_len: int = MAX_LEN):
    """A byte-level CLIPTokenizer built locally (no hub): any text tokenizes, and each of ``words``
    becomes one ``word</w>`` token through a chain of merges (earlier words get the lower ranks)."""
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        if len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_len,
                         bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)


def build_pipeline():
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = build_tokenizer()
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=LATENT * 4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
    )
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LEN, projection_dim=32,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )
    # SD 1.x ships "clip_sample": false in its PNDM config (PNDM ignores it) so that DDIM & co made
    # from_config do not clip x0; with clipping, DDIM on random weights turns 1e-6 float noise into
    # visibly different images between a batch and a single run.
    scheduler.register_to_config(clip_sample=False)
    return StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tok, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


# Stamps of the library versions that wrote a file: a rebuild with a newer transformers or diffusers writes
# other values there, while the model is the same.
VERSION_STAMPS = ("transformers_version", "_diffusers_version")


def _content(path: Path) -> bytes:
    """What makes a file the same model: JSON without version stamps (keys sorted), the tensors of a
    safetensors file (name, dtype, shape, bytes; not its header's metadata), other files' bytes."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in VERSION_STAMPS}
        return json.dumps(data, sort_keys=True).encode()
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        return b"".join(f"{name}:{t.dtype}:{t.shape};".encode() + t.tobytes() for name, t in sorted(tensors.items()))
    return path.read_bytes()


def digest(folder: Path) -> dict[str, str]:
    """sha256 of what every file under ``folder`` holds (relative path -> hex; see ``_content``), to check that
    rebuilds give the same model whatever library versions wrote it."""
    return {str(p.relative_to(folder)): hashlib.sha256(_content(p)).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def save(pipe, out: Path) -> Path:
    """``pipe`` as a diffusers folder (safetensors) at ``out``, replaced atomically; returns ``out``. Also what
    tests/families.py writes its tiny pipelines with."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def build(out: Path) -> dict[str, str]:
    """Write the pipeline into ``out`` (replaced atomically) and return its file digests."""
    return digest(save(build_pipeline(), out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder [default: tracker/models/tiny]")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out).resolve()
    files = build(out)
    total = sum((out / f).stat().st_size for f in files)
    for name, h in files.items():
        print(f"{h[:16]}  {name}")
    print(f"{out}: {len(files)} files, {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
