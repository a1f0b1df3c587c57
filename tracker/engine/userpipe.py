"""A pipeline object the user built (``tracker.run(exp, pipeline=pipe)``): what it is, and how to give it back.

The tracker cannot rebuild such a pipeline (fine-tuned weights, fused LoRAs, a ControlNet, a custom class),
so it records what it can know about it and keys its runs by a fingerprint of its components:

- ``describe``: the class, ``name_or_path``, each component's class and config hash, loaded LoRA adapters;
- ``fingerprint``: sha256 over that description plus a sample of every weight tensor (shape, dtype, a strided
  slice of raw values and the float64 sum), so two pipelines with the same configs but different weights
  (a fine-tune, a fused LoRA) get different run keys, without hashing gigabytes;
- ``UserPipeline.model``: ``pipeline:<fingerprint prefix>``, what the run's ``model`` setting becomes;
- ``Saved``: the pipeline's scheduler, VAE, device, attention processors and progress-bar config as the
  user handed it over, put back by ``restore`` when the sweep ends.

Nothing here imports torch at module level: a pipeline object arrives with torch already loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tracker.errors import UsageError
from tracker.experiment.model_refs import USER_PIPELINE_PREFIX

SAMPLE_VALUES = 64  # raw values sampled per tensor (strided over the whole tensor)
FINGERPRINT_CHARS = 16


@dataclass(frozen=True)
class UserPipeline:
    """A user's pipeline object and what the tracker records about it."""

    pipe: Any
    fingerprint: str  # "sha256:<hex>"
    description: dict[str, Any]
    dtype: str  # float32 | float16 | bfloat16
    device: str  # where its weights were when it was handed over
    size: tuple[int, int]  # its native (width, height)

    @property
    def model(self) -> str:
        """The ``model`` setting of its runs: part of every run key, so two pipelines never share keys."""
        return USER_PIPELINE_PREFIX + self.fingerprint.removeprefix("sha256:")[:FINGERPRINT_CHARS]


def wrap(pipe: Any) -> UserPipeline:
    """Check that ``pipe`` looks like a diffusers text-to-image pipeline and fingerprint it."""
    if pipe is None or not hasattr(pipe, "components") or not callable(pipe):
        raise UsageError(f"pipeline= takes a diffusers pipeline object (e.g. StableDiffusionPipeline), "
                         f"not {type(pipe).__name__}")
    for part, module in (("unet", denoiser(pipe)), ("scheduler", getattr(pipe, "scheduler", None))):
        if module is None:
            raise UsageError(f"pipeline= {type(pipe).__name__} has no {part}; the tracker runs text-to-image "
                             f"pipelines with a denoiser and a scheduler")
    from tracker.experiment import families

    description = describe(pipe)
    user = UserPipeline(pipe=pipe, fingerprint=fingerprint(pipe, description), description=description,
                        dtype=_dtype_name(pipe), device=_device_name(pipe), size=native_size(pipe))
    families.register_pipeline(families.facts_of_pipeline(user.model, pipe))
    return user


def describe(pipe: Any) -> dict[str, Any]:
    """What the recipe records: JSON-ready, small."""
    components = {}
    for name, comp in sorted(pipe.components.items()):
        if comp is None:
            components[name] = None
            continue
        entry: dict[str, Any] = {"class": type(comp).__name__}
        config = _config(comp)
        if config is not None:
            entry["config_sha256"] = _sha(_identity(config))
            if config.get("_name_or_path"):
                entry["name_or_path"] = str(config["_name_or_path"])
        elif getattr(comp, "name_or_path", None):
            entry["name_or_path"] = str(comp.name_or_path)
        components[name] = entry
    return {
        "user_pipeline": True,
        "class": type(pipe).__name__,
        "name_or_path": str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or "") or None,
        "components": components,
        "adapters": adapters(pipe),
        "dtype": _dtype_name(pipe),
    }


def adapters(pipe: Any) -> dict[str, Any]:
    """Loaded LoRA adapters per component and the active ones, where the pipeline can say (PEFT backend)."""
    out: dict[str, Any] = {}
    try:
        listed = pipe.get_list_adapters() if hasattr(pipe, "get_list_adapters") else {}
        active = pipe.get_active_adapters() if hasattr(pipe, "get_active_adapters") else []
    except Exception:  # noqa: BLE001 - no PEFT backend, or no adapters loaded: nothing to record
        return out
    if listed:
        out["loaded"] = {k: list(v) for k, v in dict(listed).items()}
        out["active"] = list(active)
        out["scales"] = _adapter_scales(pipe)
    return out


def _adapter_scales(pipe: Any) -> dict[str, float]:
    """The scale of each adapter (``set_adapters(..., adapter_weights=)``), read from the first PEFT layer using it."""
    scales: dict[str, float] = {}
    for comp in pipe.components.values():
        modules = comp.modules() if hasattr(comp, "modules") else ()
        for m in modules:
            scaling = getattr(m, "scaling", None)
            if isinstance(scaling, dict):
                for name, value in scaling.items():
                    scales.setdefault(str(name), float(value))
    return scales


def fingerprint(pipe: Any, description: dict[str, Any] | None = None) -> str:
    """sha256 over the description, the tokenizers' vocabularies and a sample of every weight tensor."""
    h = hashlib.sha256()
    h.update(json.dumps(_identity(description or describe(pipe)), sort_keys=True, default=str).encode())
    for name, comp in sorted(pipe.components.items()):
        h.update(f"\0{name}\0".encode())
        if hasattr(comp, "state_dict"):
            for tname, t in sorted(comp.state_dict().items()):
                h.update(tname.encode() + b"\0")
                h.update(_tensor_digest(t))
        elif hasattr(comp, "get_vocab"):
            h.update(_sha(sorted(comp.get_vocab().items())).encode())
    return "sha256:" + h.hexdigest()


def _tensor_digest(t: Any) -> bytes:
    """Shape, dtype, a strided sample of raw values and the float64 sum (as text with 12 significant digits,
    so the last bits of a device's reduction order do not change a key)."""
    import torch

    flat = t.detach().reshape(-1)
    n = flat.numel()
    head = f"{tuple(t.shape)}|{t.dtype}|".encode()
    if n == 0:
        return head
    step = max(1, n // SAMPLE_VALUES)
    sample = flat[::step][:SAMPLE_VALUES].to("cpu", torch.float64).numpy().tobytes()
    total = float(torch.sum(flat, dtype=torch.float64)) if flat.is_floating_point() else float(flat.sum())
    return head + sample + f"|{total:.12g}".encode()


def _config(comp: Any) -> dict | None:
    config = getattr(comp, "config", None)
    if config is None:
        return None
    if hasattr(config, "to_dict"):  # transformers' PretrainedConfig
        config = config.to_dict()
    try:
        return dict(config)
    except (TypeError, ValueError):
        return None


def _identity(d: dict) -> dict:
    """What identifies a pipeline, not where it was loaded from: no paths, no library versions (a key must not
    change with the folder the weights sit in or a diffusers upgrade)."""
    return {k: (_identity(v) if isinstance(v, dict) else v) for k, v in d.items()
            if not str(k).startswith("_") and k not in ("name_or_path", "transformers_version")}


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _dtype_name(pipe: Any) -> str:
    name = str(getattr(pipe, "dtype", "torch.float32")).removeprefix("torch.")
    if name not in ("float32", "float16", "bfloat16"):
        raise UsageError(f"pipeline= runs in {name}; the tracker runs float32, float16 or bfloat16 pipelines")
    return name


def _device_name(pipe: Any) -> str:
    device = getattr(pipe, "device", None)
    if device is None:
        return "cpu"
    text = str(device)
    return "cuda" if text == "cuda:0" else text


def denoiser(pipe: Any) -> Any:
    """The pipeline's UNet or transformer (None when it has neither). Tested with ``is None``, never for truth: a
    ``torch.compile``d module's ``__bool__`` falls back to ``len()``, which a UNet does not have."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else getattr(pipe, "transformer", None)


def native_size(pipe: Any) -> tuple[int, int]:
    """(width, height) the pipeline makes by default: the denoiser's sample size times the VAE's scale."""
    sample = getattr(getattr(denoiser(pipe), "config", None), "sample_size", None) or 64
    h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    return int(w) * factor, int(h) * factor


@dataclass
class Saved:
    """A user pipeline's state as handed over; ``restore`` puts it back."""

    scheduler: Any
    vae: Any
    device: str
    attn_processors: dict | None
    progress_config: dict = field(default_factory=dict)

    @classmethod
    def take(cls, pipe: Any) -> "Saved":
        unet = getattr(pipe, "unet", None)
        processors = dict(unet.attn_processors) if unet is not None and hasattr(unet, "attn_processors") else None
        return cls(scheduler=pipe.scheduler, vae=getattr(pipe, "vae", None), device=_device_name(pipe),
                   attn_processors=processors, progress_config=dict(getattr(pipe, "_progress_bar_config", {}) or {}))

    def restore_attention(self, pipe: Any) -> None:
        if self.attn_processors is not None:
            pipe.unet.set_attn_processor(dict(self.attn_processors))

    def restore(self, pipe: Any, offloaded: bool) -> None:
        if offloaded:
            pipe.remove_all_hooks()
        if getattr(pipe, "vae", None) is not self.vae and self.vae is not None:
            pipe.vae.to("cpu")
            pipe.vae = self.vae
        pipe.scheduler = self.scheduler
        self.restore_attention(pipe)
        pipe.to(self.device)
        pipe._progress_bar_config = dict(self.progress_config)
