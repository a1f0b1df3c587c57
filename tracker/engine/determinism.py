"""The ``deterministic`` setting: torch's deterministic algorithms around a batch's pipeline call.

On: ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic implementation raises, and
the run fails with torch's message, rather than making an image that only looks reproducible),
``cudnn.deterministic`` on and ``cudnn.benchmark`` off, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS
needs a fixed workspace to be deterministic; it is read when the process first uses cuBLAS: a sweep prepares
every pipeline before it generates, and ``Engine.prepare`` sets it then; a value the user set is kept). What torch had
before is restored after the call, so the setting is per run (an axis may vary it) and nothing leaks into
the rest of the process. Off: nothing is touched. torch is imported only inside the functions.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")  # the two values torch accepts as deterministic


def cublas_env() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` (unless the user set a deterministic value): torch reads it when the
    process first uses cuBLAS, so ``Engine.prepare`` calls this for a deterministic setting before a sweep
    generates anything (a sweep prepares every pipeline first)."""
    if os.environ.get(CUBLAS_ENV) not in CUBLAS_DETERMINISTIC:
        os.environ[CUBLAS_ENV] = CUBLAS_DETERMINISTIC[0]


def _state() -> tuple[bool, bool, bool, bool]:
    import torch

    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)


def _set(algorithms: bool, warn_only: bool, cudnn_deterministic: bool, cudnn_benchmark: bool) -> None:
    import torch

    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark


@contextmanager
def mode(deterministic: bool) -> Iterator[None]:
    """Run the body with torch's deterministic algorithms on when ``deterministic`` (else as it is)."""
    if not deterministic:
        yield
        return
    cublas_env()
    before = _state()
    _set(True, False, True, False)
    try:
        yield
    finally:
        _set(*before)


def enabled() -> bool:
    """What torch reports now: deterministic algorithms on (strict) and cuDNN deterministic."""
    algorithms, warn_only, cudnn_deterministic, cudnn_benchmark = _state()
    return algorithms and not warn_only and cudnn_deterministic and not cudnn_benchmark
