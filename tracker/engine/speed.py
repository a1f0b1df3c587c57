"""The speed levers of diffusers' "Effective and efficient diffusion" / "Accelerate inference" guides, as one
setting, ``compile`` (performance-only: not in the run key unless varied on an axis):

- ``torch.compile`` of the denoiser (``pipe.unet`` or ``pipe.transformer``) and of the VAE decoder
  (``pipe.vae.decode``), as diffusers' docs do it, with the mode/fullgraph/dynamic the setting gives;
- ``channels_last`` memory format for the denoiser and the VAE;
- ``fuse_qkv_projections()`` where the pipeline has it.

Compilation happens on the first call of each input shape, so the engine makes a short warm-up call
(2 steps, the batch's shapes) before the first real batch and reports its time apart (``warmup_seconds``):
per-image timings stay steady-state. Inductor's cache lives in the workspace (``runner.speed_cache_dir``), so a second
sweep with the same shapes mostly reuses the compiled kernels. Everything is undone when a later group
turns compile off. Imported by ``tracker.engine.core`` only (torch is already loaded there).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from tracker.errors import ModelError
from tracker.experiment.settings import COMPILE_OFF, compile_options

WARMUP_STEPS = 2


def denoiser_name(pipe: Any) -> str | None:
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            return name
    return None


def _cxx() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def check(pipe: Any, spec: str, device: str, model: str) -> None:
    """One line where compilation cannot work, before anything is compiled."""
    if spec == COMPILE_OFF:
        return
    if denoiser_name(pipe) is None:
        raise ModelError(f"compile: the pipeline of model {model!r} ({type(pipe).__name__}) has no UNet or transformer "
                         f"to compile; set compile: false")
    if not hasattr(torch, "compile"):
        raise ModelError(f"compile: torch {torch.__version__} has no torch.compile; set compile: false")
    if device == "cpu" and _cxx() is None:
        raise ModelError("compile: torch.compile (inductor) on a CPU needs a C++ compiler and none was found (g++, c++, "
                         "clang++ or $CXX); install one (e.g. apt-get install g++) or set compile: false")


class Compiled:
    """What ``apply`` changed on one pipeline, so that ``undo`` can restore it."""

    def __init__(self, spec: str, name: str, original: Any, vaes: list, fused: bool):
        self.spec, self.name, self.original, self.vaes, self.fused = spec, name, original, vaes, fused


def apply(pipe: Any, spec: str, current: Compiled | None) -> Compiled | None:
    """Make ``pipe`` match ``spec`` (``COMPILE_OFF`` or a canonical compile setting); returns the new state."""
    if current is not None and current.spec == spec:
        if spec != COMPILE_OFF and "decode" not in vars(pipe.vae):  # a VAE swapped in since
            _compile_vae(pipe.vae, compile_options(spec), current)
        return current
    undo(pipe, current)
    if spec == COMPILE_OFF:
        return None
    options = compile_options(spec)
    name = denoiser_name(pipe)
    original = getattr(pipe, name)
    original.to(memory_format=torch.channels_last)
    fused = False
    if hasattr(pipe, "fuse_qkv_projections"):
        try:
            pipe.fuse_qkv_projections()
            fused = True
        except (ValueError, NotImplementedError, AttributeError, RuntimeError):  # e.g. added KV projections
            fused = False
    state = Compiled(spec, name, original, [], fused)
    setattr(pipe, name, torch.compile(original, **options))
    _compile_vae(pipe.vae, options, state)
    return state


def _compile_vae(vae: Any, options: dict, state: Compiled) -> None:
    if vae is None:
        return
    vae.to(memory_format=torch.channels_last)
    vae.decode = torch.compile(vae.decode, **options)
    state.vaes.append(vae)


def undo(pipe: Any, state: Compiled | None) -> None:
    if state is None:
        return
    setattr(pipe, state.name, state.original)
    if state.fused and hasattr(pipe, "unfuse_qkv_projections"):
        pipe.unfuse_qkv_projections()
    state.original.to(memory_format=torch.contiguous_format)
    for vae in state.vaes:
        vars(vae).pop("decode", None)
        vae.to(memory_format=torch.contiguous_format)


def describe(spec: str) -> str:
    options = compile_options(spec)
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
