"""The model-loading helpers of ``tracker.engine.core``: one-line errors that say what was tried and how to fix
it (a missing model, pickle-only weights, offline without a cached copy) and the filters that keep the
libraries' known noise out of the tracker's output. Pure: no torch or diffusers import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

from tracker.experiment import model_refs as models
from tracker.errors import ModelError


class _DropTorchvisionNotice(logging.Filter):
    """transformers 5 warns once per image-processor class that torchvision is missing; SD never needs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


class _DropRepeatedNoise(logging.Filter):
    """Library warnings repeated for every image or every pipeline move; the engine says each once instead.

    CLIP reads 77 tokens: transformers and diffusers log the dropped tokens for every image of every batch
    (``RecordFacts.warn_truncated`` says it once per prompt)."""

    NOISE = ("The following part of your input was truncated", "Token indices sequence length is longer",
             # diffusers repeats this on every move of a half-precision pipeline to the CPU, where it does run
             # (``_check_dtype`` proved it); the engine says once that it is slow instead
             "Pipelines loaded with `dtype=torch.float16` cannot run with `cpu` device",
             "Pipelines loaded with `dtype=torch.bfloat16` cannot run with `cpu` device")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOISE)


class _DropLoadNoise(logging.Filter):
    """diffusers logs an *error* when a safetensors file is missing even where it then falls back to
    pickle on purpose (allow_pickle) or where we turn the failure into our own one-line ModelError."""

    NOISE = ("An error occurred while trying to fetch", "Defaulting to unsafe serialization",
             # from_single_file casts each model with ``.to(dtype)`` itself (nothing the user can change)
             "There are modules in")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOISE)


@contextlib.contextmanager
def _quiet_loading():
    """Silence the known noise of one from_pretrained call; other warnings still show."""
    handlers = logging.getLogger("diffusers").handlers
    noise = _DropLoadNoise()
    for h in handlers:
        h.addFilter(noise)
    try:
        with warnings.catch_warnings():
            # diffusers passes a deprecated argument to huggingface_hub, which warns on every hub load
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            yield
    finally:
        for h in handlers:
            h.removeFilter(noise)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _download_hint(repo: str) -> str:
    return f"run `hf download {repo}` (or `huggingface-cli download {repo}`) while online, or give a local folder"


def _describe(ref: models.ModelRef) -> str:
    if ref.kind == "builtin":
        return f"built-in model {ref.name!r} ({ref.location})"
    if ref.kind == "local":
        return f"local folder {ref.location}"
    if ref.kind == "file":
        return f"single file {ref.location}"
    return f"Hugging Face Hub id {ref.location!r}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _missing_error(what: str, ref: models.ModelRef, e: BaseException | None = None) -> ModelError:
    """One line: what was tried and how to fix it."""
    if ref.kind == "builtin":
        return ModelError(f"{what} {ref.name!r}: the built-in model folder {ref.location} is missing or incomplete; "
                          f"reinstall prompt-tracker (or rebuild it with tools/build_tiny_model.py)")
    if ref.kind == "local":
        reason = f" ({_first_line(e)})" if e is not None else ""
        return ModelError(f"{what} {ref.name!r}: no diffusers model in local folder {ref.location}{reason}; "
                          f"give a folder saved with save_pretrained, or a Hugging Face Hub id")
    if _offline():
        return ModelError(f"{what} {ref.name!r}: not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                          f"{_download_hint(ref.location)}")
    reason = f": {_first_line(e)}" if e is not None else ""
    return ModelError(f"{what} {ref.name!r}: cannot be loaded from the Hugging Face Hub{reason}; "
                      f"check the id and your network, or give a local folder")


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


def _pickle_only(folder: Path) -> str | None:
    """The first component folder (or the folder itself) whose weights exist only in pickle formats."""
    for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        files = [f for f in d.iterdir() if f.is_file()]
        if any(f.suffix in PICKLE_SUFFIXES for f in files) and not any(f.suffix == ".safetensors" for f in files):
            return d.name if d != folder else "."
    return None


def _pickle_error(what: str, ref: models.ModelRef, part: str | None = None) -> ModelError:
    where = f" ({part}/)" if part and part != "." else ""
    return ModelError(f"{what} {ref.name!r}: {_describe(ref)}{where} has only pickle (.bin/.ckpt) weights, which can "
                      f"run code when loaded; convert it to safetensors, or set allow_pickle: true if you trust it")


def _is_missing(e: BaseException) -> bool:
    """from_pretrained reports a missing model as OSError/EnvironmentError (hub errors subclass it)."""
    return isinstance(e, (OSError, FileNotFoundError)) or type(e).__name__ in (
        "RepositoryNotFoundError", "LocalEntryNotFoundError", "EntryNotFoundError", "HfHubHTTPError",
        "RevisionNotFoundError", "GatedRepoError")


def _safetensors_refused(e: BaseException) -> bool:
    text = str(e).lower()
    return "safetensors" in text and ("use_safetensors" in text or "not found" in text or "could not find" in text)
