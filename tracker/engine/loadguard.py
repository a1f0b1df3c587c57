"""One model load at a time in a process, and no library patch left behind by one.

Loading a model patches process-wide state for its duration: accelerate's empty-weights context swaps
``torch.nn.Module.register_parameter`` (and, with buffers, ``register_buffer`` and torch's tensor constructors),
diffusers' and transformers' ``no_init_weights`` swap the functions of ``torch.nn.init``, and a ``dtype`` sets
torch's default dtype. Two threads loading at once (``tracker.run()`` from two notebook threads) interleave these
save/restore pairs: both loads fail ("Unsupported device type 'meta'") and the later restore can put the other's
patch back for good, breaking every later load in the process. ``loading()`` serializes loads process-wide and
puts every such global back as it found it, whatever the load did or raised.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

_LOCK = threading.RLock()
_TORCH_CONSTRUCTORS = ("empty", "zeros", "ones", "full")


def _patch_points() -> list[tuple[Any, str]]:
    import torch

    points: list[tuple[Any, str]] = [(torch.nn.Module, "register_parameter"), (torch.nn.Module, "register_buffer"),
                                     (torch.nn.Module, "register_module")]
    points += [(torch, name) for name in _TORCH_CONSTRUCTORS]
    points += [(torch.nn.init, name) for name in dir(torch.nn.init)
               if not name.startswith("_") and callable(getattr(torch.nn.init, name))]
    return points


def snapshot() -> tuple[list[tuple[Any, str, Any]], Any]:
    """The globals a model load may patch, as they are now."""
    import torch

    return [(owner, name, owner.__dict__.get(name, getattr(owner, name))) for owner, name in _patch_points()], \
        torch.get_default_dtype()


def restore(saved: tuple[list[tuple[Any, str, Any]], Any]) -> None:
    """Put back what ``snapshot`` saw (only what changed)."""
    import torch

    values, dtype = saved
    for owner, name, value in values:
        if owner.__dict__.get(name, getattr(owner, name, None)) is not value:
            setattr(owner, name, value)
    if torch.get_default_dtype() != dtype:
        torch.set_default_dtype(dtype)


@contextmanager
def loading() -> Iterator[None]:
    """Around every model load (pipelines, VAEs, LoRAs, metric models): one at a time in this process, and the
    library globals it patches restored afterwards, also when it fails."""
    with _LOCK:
        saved = snapshot()
        try:
            yield
        finally:
            restore(saved)
