"""Single-file checkpoints and VAEs (A1111/CompVis/SGM ``.safetensors``): what the file is, where its diffusers
config comes from, and its hashes. Pure: reads the safetensors header (JSON) and config JSON, never torch.

An experiment file names one as ``model: x.safetensors`` (the family is read from the file's keys, as diffusers'
``infer_diffusers_model_type`` does, and the config is taken from the Hugging Face cache of that type's canonical
repo, never downloaded) or ``model: {file: x.safetensors, config: FOLDER-OR-HUB-ID}``. ``Settings.model`` holds
the file, or ``FILE?config=CONFIG`` when a config is given (one string: the runs column, run keys and the PNG's
``Model`` read it as they read any model). ``vae:`` likewise; a VAE file's config is by default the run model's
own VAE config (``vae/`` of its folder or of its single file's config).

The engine loads them with diffusers' ``from_single_file`` (``tracker.engine.loading``); the run's
``model_revision`` is ``sha256:<the file's sha256>``, whose first 10 hex digits are A1111's ``Model hash``
(``CheckpointInfo.shorthash``); A1111's older 8-digit hash (sha256 of 64 KiB at offset 1 MiB) is ``legacy_hash``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tracker.fsutil import sha256_once

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUFFIXES = (SAFETENSORS,) + PICKLE_SUFFIXES
CONFIG_MARK = "?config="
HEADER_MAX_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header

# diffusers' model types (``infer_diffusers_model_type``) that load as a text-to-image pipeline from a single file
# here: type -> (what it is in words, the pipeline class, the canonical repo whose config diffusers would fetch:
# ``DIFFUSERS_DEFAULT_PIPELINE_PATHS``).
PIPELINE_TYPES = {
    "v1": ("a Stable Diffusion 1.x checkpoint", "StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "v2": ("a Stable Diffusion 2.x checkpoint", "StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1"),
    "xl_base": ("an SDXL checkpoint", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0"),
    "playground-v2-5": ("a Playground v2.5 checkpoint", "StableDiffusionXLPipeline",
                        "playgroundai/playground-v2.5-1024px-aesthetic"),
}
# The pipeline classes whose single files load here (what ``config:`` must name).
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
SUPPORTED = "SD 1.x/2.x and SDXL checkpoints (A1111/CompVis/SGM layout), and VAEs in the original layout"

# diffusers' ``CHECKPOINT_KEY_NAMES`` (diffusers/loaders/single_file_utils.py, 0.42), the keys its
# ``infer_diffusers_model_type`` tells the types apart by.
_UNET = "model.diffusion_model."
_KEYS = {
    "v1": "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
    "v2": "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
    "xl_base": "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
    "xl_refiner": "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias",
    "upscale": "model.diffusion_model.input_blocks.10.0.skip_connection.bias",
    "playground-v2-5": "edm_mean",
    "inpainting": "model.diffusion_model.input_blocks.0.0.weight",
}
# Other families diffusers recognises in a single file, by one of its keys: refused in one line, named.
_OTHER = (
    ("an SD3/3.5 transformer", ("joint_blocks.0.context_block.adaLN_modulation.1.bias",)),
    ("a FLUX.2 transformer", ("single_stream_modulation.lin.weight",)),
    ("a FLUX.1 transformer", ("double_blocks.0.img_attn.norm.key_norm.scale",)),
    ("a ControlNet", ("control_model.time_embed.0.weight", "controlnet_cond_embedding.conv_in.weight")),
    ("a Sana transformer", ("blocks.0.cross_attn.q_linear.weight",)),
    ("a Lumina 2 transformer", ("cap_embedder.0.weight",)),
    ("a Wan transformer", ("head.modulation",)),
    ("a Stable Cascade model", ("clip_txt_mapper.weight", "down_blocks.1.0.channelwise.0.weight")),
)


class SingleFileError(ValueError):
    """What is wrong with a single file, in words (the caller adds the file name and field)."""


def is_single_file(name: Any) -> bool:
    """Whether a model/vae setting names a single weights file (by its suffix, or an existing file)."""
    if not isinstance(name, str):
        return False
    file = split(name)[0]
    return file.lower().endswith(SUFFIXES) or (os.path.isfile(os.path.expanduser(file)) if file else False)


def split(name: str) -> tuple[str, str | None]:
    """``FILE?config=CONFIG`` -> (FILE, CONFIG); a plain name -> (name, None)."""
    file, mark, config = name.partition(CONFIG_MARK)
    return (file, config) if mark else (name, None)


def canonical(file: str, config: str | None) -> str:
    return f"{file}{CONFIG_MARK}{config}" if config else file


def locate(file: str, base_dir: Path | None) -> Path:
    """A file named in an experiment file: relative to the file's folder, as model folders are."""
    p = Path(file).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p.resolve()


# ---------------------------------------------------------------------------------------------- the file itself


@lru_cache(maxsize=64)
def _header(path: str, size: int, mtime_ns: int) -> dict[str, tuple[int, ...]]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SingleFileError("is not a safetensors file (shorter than its header)")
            (n,) = struct.unpack("<Q", head)
            if n > HEADER_MAX_BYTES or n + 8 > size:
                raise SingleFileError("is not a safetensors file (its header length is not plausible)")
            data = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, SingleFileError):
            raise
        raise SingleFileError("is not a safetensors file (its header is not JSON)") from None
    if not isinstance(data, dict):
        raise SingleFileError("is not a safetensors file (its header is not a mapping)")
    return {k: tuple(v.get("shape") or ()) for k, v in data.items() if k != "__metadata__" and isinstance(v, dict)}


def header(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a ``.safetensors`` file, from its JSON header (no tensor is read)."""
    st = path.stat()
    return _header(str(path), st.st_size, st.st_mtime_ns)


def model_type(keys: dict[str, tuple[int, ...]]) -> str:
    """diffusers' model type of a checkpoint (``infer_diffusers_model_type``'s order, for the types here), or a
    SingleFileError naming what the file is when it is not a text-to-image checkpoint this loads."""
    if _KEYS["inpainting"] in keys and keys[_KEYS["inpainting"]][1:2] not in ((4,), ()):
        raise SingleFileError(f"is an inpainting or instruct-pix2pix checkpoint ({keys[_KEYS['inpainting']][1]} "
                              f"input channels), not a text-to-image one; supported: {SUPPORTED}")
    if _KEYS["v2"] in keys and keys[_KEYS["v2"]][-1:] == (1024,):
        return "v2"
    if _KEYS["playground-v2-5"] in keys:
        return "playground-v2-5"
    if _KEYS["xl_base"] in keys:
        return "xl_base"
    if _KEYS["xl_refiner"] in keys:
        raise SingleFileError(f"is an SDXL refiner checkpoint (image-to-image), not a text-to-image one; "
                              f"supported: {SUPPORTED}")
    if _KEYS["upscale"] in keys:
        raise SingleFileError(f"is an upscaler checkpoint, not a text-to-image one; supported: {SUPPORTED}")
    for what, names in _OTHER:
        if any(n in keys or f"{_UNET}{n}" in keys for n in names):
            raise SingleFileError(f"is {what} single file, which the tracker does not load (supported: {SUPPORTED}); "
                                  f"use the model's diffusers folder or Hub id")
    if not any(k.startswith(_UNET) for k in keys):
        if is_vae_layout(keys):
            raise SingleFileError("is a VAE, not a whole checkpoint; give it as vae:")
        raise SingleFileError(f"has no UNet in the original layout (no {_UNET}* keys): not a checkpoint this loads "
                              f"(supported: {SUPPORTED})")
    return "v1"  # diffusers' own fallback: a CompVis UNet without the markers above


_VAE_ORIGINAL = re.compile(r"^(first_stage_model\.|vae\.)?decoder\.up\.\d+\.block\.\d+\.")
_VAE_DIFFUSERS = re.compile(r"^decoder\.up_blocks\.\d+\.resnets\.")


def is_vae_layout(keys: dict[str, tuple[int, ...]]) -> bool:
    """An AutoencoderKL in the original (LDM) layout, bare or inside a checkpoint (``first_stage_model.``)."""
    return any(_VAE_ORIGINAL.match(k) for k in keys)


def check_vae(keys: dict[str, tuple[int, ...]]) -> None:
    if is_vae_layout(keys):
        return
    if any(_VAE_DIFFUSERS.match(k) for k in keys):
        raise SingleFileError("is a VAE in the diffusers layout, which from_single_file does not read; put it in a "
                              "folder with its config.json (AutoencoderKL.save_pretrained) and give that folder")
    raise SingleFileError("has no VAE in the original layout (no decoder.up.N.block.* keys, bare or under "
                          "first_stage_model.); give an A1111/CompVis VAE file, a VAE folder or a Hub id")


# ---------------------------------------------------------------------------------------------- configs


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_hub_file(repo: str, filename: str) -> str | None:
    """A file of a Hub repo from the local Hugging Face cache only (never the network)."""
    if not re.match(r"^[\w.-]+/[\w.-]+$", repo):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename)
    except Exception:  # noqa: BLE001 - a malformed id or cache: not cached
        return None
    return found if isinstance(found, str) else None


@dataclass(frozen=True)
class Config:
    """Where a single file's diffusers config is: a local folder, or a Hub id (with its cached folder, if any)."""

    location: str  # a folder path or a Hub repo id (what from_single_file's ``config=`` gets)
    hub: bool
    folder: Path | None  # a folder holding the config files (the local one, or the cached snapshot); None: not cached
    inferred: bool = False  # from the file's type, not the experiment file

    def json(self, name: str) -> dict | None:
        if self.folder is None:
            return None
        try:
            data = json.loads((self.folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def class_name(self) -> str | None:
        index = self.json("model_index.json")
        return index.get("_class_name") if index else None


def config_of(config: str, base_dir: Path | None) -> Config:
    """The ``config:`` of a single file: an existing local folder, else a Hub id (its cached snapshot if any)."""
    p = Path(config).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).is_dir():
        p = base_dir / p
    if p.is_dir():
        return Config(str(p.resolve()), False, p.resolve())
    cached = cached_hub_file(config, "model_index.json") or cached_hub_file(config, "config.json")
    return Config(config, True, Path(cached).parent if cached else None)


def inferred_config(path: Path) -> tuple[str, Config]:
    """(the file's type in words, the config of its canonical repo from the HF cache) for a file without
    ``config:``; a SingleFileError saying where it looked and how to give ``config:`` when it is not cached."""
    kind = model_type(header(path))
    words, _cls, repo = PIPELINE_TYPES[kind]
    cached = cached_hub_file(repo, "model_index.json")
    if cached is None:
        raise SingleFileError(f"is {words} (diffusers type {kind!r}); its diffusers config is not available offline: "
                              f"looked in the Hugging Face cache for {repo} (model_index.json); give "
                              f"model: {{file: {path.name}, config: FOLDER-OR-HUB-ID}} with a diffusers folder (or a "
                              f"cached Hub id) of the same family")
    return words, Config(repo, True, Path(cached).parent, inferred=True)


def checkpoint_config(name: str, base_dir: Path | None) -> Config:
    """The config a checkpoint setting (``FILE`` or ``FILE?config=CONFIG``) loads with; SingleFileError if none."""
    file, config = split(name)
    path = locate(file, base_dir)
    if config:
        return config_of(config, base_dir)
    return inferred_config(path)[1]


def check_checkpoint(name: str, base_dir: Path | None, allow_pickle: bool) -> None:
    """What the parser checks of ``model: FILE`` (or with ``config:``): the file exists, is safetensors (pickle
    only with allow_pickle, and then with config:), is a text-to-image checkpoint of a supported family, and has
    a config here (a local folder, or a Hub id in the cache while offline) of a pipeline class that loads it."""
    file, config = split(name)
    path = locate(file, base_dir)
    _check_file(path, allow_pickle, needs_config=not config)
    if path.suffix.lower() == SAFETENSORS:
        words = PIPELINE_TYPES[model_type(header(path))][0]
    else:
        words = "a pickle checkpoint"
    cfg = config_of(config, base_dir) if config else inferred_config(path)[1]
    if cfg.hub and cfg.folder is None:
        if offline():
            raise SingleFileError(f"config {config!r} is neither a local folder nor a Hub id in the Hugging Face "
                                  f"cache, and HF_HUB_OFFLINE is set; give a local diffusers folder of the same family")
        return  # a Hub id fetched by diffusers when online, as a Hub model is
    cls = cfg.class_name()
    if cls is None:
        raise SingleFileError(f"config {cfg.location}: has no model_index.json; give a diffusers pipeline folder (or "
                              f"Hub id) of the same family")
    if cls not in PIPELINE_CLASSES:
        raise SingleFileError(f"config {cfg.location} is a {cls}, whose single files the tracker does not load "
                              f"(supported: {SUPPORTED})")
    if path.suffix.lower() == SAFETENSORS:
        want = PIPELINE_TYPES[model_type(header(path))][1]
        if want != cls:
            raise SingleFileError(f"is {words}, but config {cfg.location} is a {cls}; give a {want} folder "
                                  f"(or Hub id) as config:")


def check_vae_file(name: str, base_dir: Path | None, allow_pickle: bool) -> None:
    file, config = split(name)
    path = locate(file, base_dir)
    _check_file(path, allow_pickle, needs_config=False)
    if path.suffix.lower() == SAFETENSORS:
        check_vae(header(path))
    if config:
        cfg = config_of(config, base_dir)
        if cfg.folder is None:
            if offline():
                raise SingleFileError(f"config {config!r} is neither a local folder nor a Hub id in the Hugging Face "
                                      f"cache, and HF_HUB_OFFLINE is set; give a local VAE or pipeline folder")
        elif cfg.json("config.json") is None and cfg.json("vae/config.json") is None:
            raise SingleFileError(f"config {cfg.location}: has no config.json or vae/config.json; give a VAE "
                                  f"folder or a pipeline folder with a vae/")


def _check_file(path: Path, allow_pickle: bool, needs_config: bool) -> None:
    if not path.exists():
        raise SingleFileError(f"no such file ({path})")
    if not path.is_file():
        raise SingleFileError(f"is not a file ({path})")
    suffix = path.suffix.lower()
    if suffix != SAFETENSORS:
        if suffix not in PICKLE_SUFFIXES:
            raise SingleFileError(f"is a {suffix or 'suffix-less'} file; a single-file model is a .safetensors file "
                                  f"(or, with allow_pickle: true, .ckpt/.pt/.pth/.bin)")
        if not allow_pickle:
            raise SingleFileError(f"is a pickle file ({suffix}), which can run code when loaded; convert it to "
                                  f".safetensors, or set allow_pickle: true if you trust it")
        if needs_config:
            raise SingleFileError(f"is a pickle file ({suffix}): its family cannot be read without loading it; "
                                  f"give {{file: {path.name}, config: FOLDER-OR-HUB-ID}}")
        return
    header(path)


# ---------------------------------------------------------------------------------------------- hashes


def short_hash(path: Path) -> str:
    """A1111's ``Model hash``: the first 10 hex digits of the file's sha256."""
    return sha256_once(path)[:10]


def legacy_hash(path: Path) -> str:
    """A1111's older 8-digit model hash: sha256 of the 64 KiB at offset 1 MiB."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def matches_hash(path: Path, model_hash: str) -> bool:
    """Whether an A1111 ``Model hash`` (10-digit, 8-digit legacy, or a full sha256) names this file."""
    h = model_hash.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", h):
        return False
    if len(h) == 8 and legacy_hash(path) == h:
        return True
    return sha256_once(path).startswith(h)
