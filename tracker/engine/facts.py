"""The facts an ``Engine`` gives for each run's record: the prompts' truncation check, the scheduler's full
config, the model's revision (a local folder hashed in the background), the environment and a user
pipeline's description. ``RecordFacts`` is a part the engine owns (``Engine.facts``): it is given the engine's
``PipelineCache`` (to load a model for the truncation check, to resolve model names) and the user's pipeline,
and keeps its own caches (hashes, prompts already checked); no torch at import."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tracker.engine.machine import _environment, _folder_hash, _hub_revision, _in_background, _stat_signature

if TYPE_CHECKING:
    from tracker.engine.loading import PipelineCache
    from tracker.experiment.plan import PlannedRun

log = logging.getLogger("tracker")


def prompt_reader(pipe: Any, settings: Any = None) -> tuple[Any, int, str] | None:
    """(tokenizer, token limit, the encoder in words) of the text encoder a family's conditioning comes from:
    with a ``max_sequence_length`` call argument (SD3, Flux, Qwen-Image, Sana, PixArt, FLUX.2) the T5/LLM
    tokenizer (``tokenizer_3``, else ``tokenizer_2``, else ``tokenizer``) and that argument's value (the run's
    ``call:`` value, else the pipeline's default: T5 reads 512 tokens on Flux, not CLIP's 77); otherwise (SD,
    SDXL) the CLIP tokenizer and its ``model_max_length``. Templated families (Qwen-Image, Sana) add their own
    tokens around the prompt, so their count is the prompt's own."""
    import inspect

    try:
        params = inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        params = {}
    if "max_sequence_length" in params:
        name = next((n for n in ("tokenizer_3", "tokenizer_2", "tokenizer") if getattr(pipe, n, None) is not None),
                    None)
        if name is None:
            return None
        limit = dict(getattr(settings, "call", None) or ()).get("max_sequence_length",
                                                                 params["max_sequence_length"].default)
        if not isinstance(limit, int) or isinstance(limit, bool):
            return None
        encoder = type(getattr(pipe, "text_encoder" + name.removeprefix("tokenizer"), None)).__name__
        return getattr(pipe, name), limit, f"the text encoder {encoder} (max_sequence_length {limit})"
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        return None
    return tokenizer, tokenizer.model_max_length, "the text encoder"


class RecordFacts:
    """What the record of a run needs from the engine (see the module's docstring)."""

    def __init__(self, pipelines: "PipelineCache", user: Any = None):
        self.pipelines = pipelines
        self.user = user
        self._hashes: dict[str, tuple[tuple, Future]] = {}  # location -> (stat signature, its hash)
        self._hash_lock = threading.Lock()
        self._truncated: set[str] = set()  # prompts already checked (each warned about once)

    def check_prompts(self, runs: Sequence["PlannedRun"]) -> None:
        """The truncation check of every prompt up front, batched per model (a sweep calls it before it
        starts: ~4 ms per prompt one by one on a slow CPU, which between GPU batches would idle the GPU)."""
        by_model: dict[tuple, list[PlannedRun]] = {}
        for r in runs:
            by_model.setdefault((r.settings.model, r.settings.dtype, r.settings.allow_pickle), []).append(r)
        for group in by_model.values():
            pipe = self.pipelines.pipeline(group[0].settings).pipe
            weighted = {r.settings.prompt_syntax for r in group} - {"plain"}
            if weighted:
                from tracker.prompts import weighting

                weighting.check_supported(pipe, sorted(weighted)[0])  # one line before anything is made
            # weighted prompts: compel chunks SD's and SDXL's long prompts (nothing is cut)
            self.warn_truncated(pipe, [r for r in group if r.settings.prompt_syntax == "plain"])

    def warn_truncated(self, pipe: Any, runs: Sequence["PlannedRun"]) -> None:
        """Say once per prompt when the family's main text encoder will not read all of it (``prompt_reader``)."""
        reader = prompt_reader(pipe, runs[0].settings if runs else None)
        if reader is None:
            return
        tokenizer, limit, encoder = reader
        texts = [t for t in dict.fromkeys(t for r in runs for t in (r.prompt, r.negative_prompt))
                 if t and t not in self._truncated]
        if not texts:
            return
        self._truncated.update(texts)
        for text, ids in zip(texts, tokenizer(texts, truncation=False).input_ids):
            if len(ids) > limit:
                log.warning("a prompt is %d tokens long; %s reads the first %d: %.60s...",
                            len(ids), encoder, limit, text)

    @staticmethod
    def scheduler_config(pipe: Any) -> dict:
        """The full, JSON-ready config of ``pipe``'s scheduler (``_class_name`` included)."""
        return json.loads(pipe.scheduler.to_json_string())

    def model_revision(self, model: str) -> str | None:
        """The commit hash of a cached hub model, ``sha256:<hex>`` over the files of a local/builtin folder, or of a
        single file its own sha256 (whose first 10 hex digits are A1111's ``Model hash``)."""
        return self.model_revision_later(model)()

    def model_revision_later(self, model: str) -> Callable[[], str | None]:
        """``model_revision`` without waiting for it: a local folder is hashed in a background thread (once per
        content: path, sizes and mtimes), so hashing gigabytes never delays the first image. Call the result
        (in the writing stage) to get the value."""
        if self.user is not None and model == self.user.model:
            fingerprint = self.user.fingerprint
            return lambda: fingerprint
        ref = self.pipelines.ref(model)
        folder = Path(ref.location)
        if ref.kind == "file" and folder.is_file():
            return self.file_revision_later(folder)
        if ref.kind == "hub" or not folder.is_dir():
            value = _hub_revision(ref.location) if ref.kind == "hub" else None
            return lambda: value
        signature = _stat_signature(folder)
        with self._hash_lock:
            cached = self._hashes.get(ref.location)
            if cached is None or cached[0] != signature:
                cached = self._hashes[ref.location] = (signature, _in_background(_folder_hash, folder))
        return cached[1].result

    def file_revision_later(self, path: Path) -> Callable[[], str]:
        """``sha256:<hex>`` of one file (a single-file checkpoint or VAE), hashed in the background once per
        path, size and mtime."""
        from tracker.fsutil import sha256_once

        st = path.stat()
        signature = ((str(path), st.st_size, st.st_mtime_ns),)
        with self._hash_lock:
            cached = self._hashes.get(str(path))
            if cached is None or cached[0] != signature:
                cached = self._hashes[str(path)] = (
                    signature, _in_background(lambda: "sha256:" + sha256_once(path)))
        return cached[1].result

    def vae_revision_later(self, vae: str) -> Callable[[], str | None] | None:
        """``sha256:<hex>`` of a single-file VAE, hashed in the background (A1111's ``VAE hash`` is its first 10 hex
        digits); None for any other VAE."""
        if not vae or vae == "default":
            return None
        ref = self.pipelines.ref(vae)
        return self.file_revision_later(Path(ref.location)) if ref.kind == "file" and Path(ref.location).is_file() \
            else None

    def environment(self, device: str) -> dict:
        """Versions and hardware that produced the images on ``device``."""
        import torch

        env = {**_environment(device), "torch_threads": torch.get_num_threads()}
        if self.user is not None:
            env["pipeline"] = self.user.description
        return env

    def pipeline_info(self, model: str) -> dict | None:
        """What the recipe records about a user's pipeline object (None for a model the tracker loads)."""
        return self.user.description if self.user is not None and model == self.user.model else None
