"""The ``attention`` setting: which attention kernels the denoiser runs (performance-only, like ``compile``:
in a run key only when varied on an axis).

diffusers 0.42 has two kinds of denoisers:

- models whose attention processors go through diffusers' attention dispatcher (processors with an
  ``_attention_backend``: Flux, Wan, QwenImage, ...). For them the setting is
  ``denoiser.set_attention_backend(name)``, any ``diffusers.models.attention_dispatch.AttentionBackendName``
  (flash, sage, flex, xformers, native, _native_math, ...), undone by ``reset_attention_backend()``;
- models whose processors call torch's ``scaled_dot_product_attention`` themselves (``AttnProcessor2_0`` and its
  kin: the SD 1.x/2.x and SDXL UNets). ``set_attention_backend`` leaves their processors as they are, so the torch
  SDPA kernels that diffusers' native backends name are chosen around the pipeline call with
  ``torch.nn.attention.sdpa_kernel``: native (torch picks), _native_flash, _native_efficient, _native_math,
  _native_cudnn. Other backends are refused for them, in one line.

``default`` leaves the model as it was loaded. Before anything is generated, ``check`` proves the backend works
here: diffusers' own requirement check (the package it needs), then one tiny attention call through it on the
run's device and dtype (flash on a CPU fails there, not mid-sweep). Imported by ``tracker.engine.core`` only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from tracker.engine.userpipe import denoiser
from tracker.errors import ModelError
from tracker.experiment.settings import ATTENTION_DEFAULT

# diffusers' names for torch's own SDPA kernels -> torch.nn.attention.SDPBackend members (None: torch chooses)
SDPA_KERNELS = {"native": None, "_native_flash": "FLASH_ATTENTION", "_native_efficient": "EFFICIENT_ATTENTION",
                "_native_math": "MATH", "_native_cudnn": "CUDNN_ATTENTION"}


@dataclass(frozen=True)
class Applied:
    """The backend in force on one pipeline, so that ``apply`` can undo it."""

    name: str
    dispatcher: bool  # set through set_attention_backend (else: sdpa_kernel around each call)
    active_before: Any = None  # diffusers' process-wide active backend before set_attention_backend changed it


def known() -> list[str]:
    """Every backend name diffusers knows (``AttentionBackendName``)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


def _processors(denoiser: Any) -> list:
    return list(getattr(denoiser, "attn_processors", {}).values())


def uses_dispatcher(denoiser: Any) -> bool:
    """Whether the denoiser's attention goes through diffusers' dispatcher (set_attention_backend acts on it)."""
    return any(hasattr(p, "_attention_backend") for p in _processors(denoiser))


def check(pipe: Any, name: str, device: str, dtype: torch.dtype, model: str) -> None:
    """One line (ModelError, naming the field and value) where ``name`` cannot run here; else nothing."""
    if name == ATTENTION_DEFAULT:
        return
    import diffusers

    names = known()
    if name not in names:
        public = ", ".join(n for n in names if not n.startswith("_"))
        raise ModelError(f"attention: {name!r} is not an attention backend of diffusers {diffusers.__version__}; "
                         f"known: default, {public} (and torch's own kernels _native_flash, _native_efficient, "
                         f"_native_math, _native_cudnn)")
    module = denoiser(pipe)
    if module is None or not hasattr(module, "set_attention_backend"):
        raise ModelError(f"attention: {name!r}: the pipeline of model {model!r} ({type(pipe).__name__}) has no UNet "
                         f"or transformer whose attention backend can be set; use attention: default")
    if uses_dispatcher(module):
        _probe_dispatcher(name, device, dtype)
        return
    kinds = sorted({type(p).__name__ for p in _processors(module)})
    if name not in SDPA_KERNELS or not kinds or not all(k.endswith("2_0") for k in kinds):
        raise ModelError(f"attention: {name!r} cannot apply to model {model!r}: its {type(module).__name__} "
                         f"attention ({', '.join(kinds) or 'no processors'}) does not go through diffusers' attention "
                         f"dispatcher" + ("; for it use default or torch's kernels: " + ", ".join(SDPA_KERNELS)
                                          if kinds and all(k.endswith("2_0") for k in kinds) else
                                          "; use attention: default"))
    _probe(name, device, dtype, lambda q: _sdpa_call(name, q))


def first_line(e: BaseException) -> str:
    from tracker.engine.load_errors import _first_line

    return _first_line(e)


def _probe_dispatcher(name: str, device: str, dtype: torch.dtype) -> None:
    from diffusers.models import attention_dispatch as ad

    backend = ad.AttentionBackendName(name)
    try:
        ad._check_attention_backend_requirements(backend)  # the package it needs (flash-attn, sageattention ...)
        ad._maybe_download_kernel_for_backend(backend)  # hub kernels only (the `kernels` package)
    except Exception as e:  # noqa: BLE001 - diffusers raises RuntimeError/ImportError/hub errors
        raise ModelError(f"attention: {name!r} is not available on this machine: {first_line(e)}") from None
    # (batch, sequence, heads, head_dim), as the dispatcher takes them
    _probe(name, device, dtype, lambda q: ad.dispatch_attention_fn(q, q, q, backend=backend))


def _probe(name: str, device: str, dtype: torch.dtype, call) -> None:
    """One tiny attention call through the backend on the run's device and dtype."""
    try:
        with torch.no_grad():
            call(torch.zeros((1, 4, 2, 8), device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - kernels raise RuntimeError, ValueError, NotImplementedError ...
        raise ModelError(f"attention: {name!r} does not run on device {device!r} in {str(dtype).replace('torch.', '')}: "
                         f"{first_line(e)}; use attention: default or another backend") from None


def _sdpa_call(name: str, q: torch.Tensor) -> torch.Tensor:
    with kernels(Applied(name, dispatcher=False)):
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)


def apply(pipe: Any, name: str, current: Applied | None) -> Applied | None:
    """Put backend ``name`` in force on ``pipe`` (after ``check``); undo ``current`` first. None: as loaded."""
    if current is not None and current.name == name:
        return current
    undo(pipe, current)
    if name == ATTENTION_DEFAULT:
        return None
    module = denoiser(pipe)
    if not uses_dispatcher(module):
        return Applied(name, dispatcher=False)
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry._active_backend
    module.set_attention_backend(name)
    return Applied(name, dispatcher=True, active_before=before)


def undo(pipe: Any, current: Applied | None) -> None:
    if current is None or not current.dispatcher:
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    denoiser(pipe).reset_attention_backend()
    _AttentionBackendRegistry.set_active_backend(current.active_before)


def kernels(applied: Applied | None):
    """The context a pipeline call runs in: torch's SDPA kernel choice for a UNet-style model, else nothing."""
    kernel = SDPA_KERNELS.get(applied.name) if applied is not None and not applied.dispatcher else None
    if kernel is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, kernel)])
