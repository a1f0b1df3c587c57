"""``clip_score``: prompt adherence as CLIP's cosine similarity of prompt and image, times 100.

As in diffusers' evaluation guide (torchmetrics' CLIPScore over ``openai/clip-vit-base-patch16``),
except that a negative similarity is kept rather than clipped to 0. transformers' ``CLIPModel`` and
``CLIPProcessor``; the model loads once per process (``tracker.metrics.get`` caches the metric), in
float32, on the sweep's device, and scores in batches. Weights load from safetensors unless
``allow_pickle: true``. Options (``metric_options: {clip_score: {...}}``): ``model`` (a hub id or a
local folder saved with ``save_pretrained``), ``revision``, ``batch_size`` (default 32), ``allow_pickle``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from tracker.metrics import MetricError

DEFAULT_MODEL = "openai/clip-vit-base-patch16"
VERSION = "1"
TEXT_CACHE = 4096  # prompts whose text embeddings a CLIP scorer keeps (a prompt set is 1,600 at most)
OPTIONS = ("model", "revision", "batch_size", "allow_pickle")


class ClipScore:
    name = "clip_score"
    higher_is_better = True

    def __init__(self, options: Mapping[str, Any] | None = None, device: str = "cpu"):
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise MetricError(f"metric 'clip_score': unknown option {unknown[0]!r}; known: {', '.join(OPTIONS)}")
        self.model_id = str(options.get("model") or DEFAULT_MODEL)
        self.batch_size = int(options.get("batch_size", 32))
        if self.batch_size < 1:
            raise MetricError(f"metric 'clip_score': batch_size must be at least 1 but is {self.batch_size}")
        self.device = device_for(device)
        self.model, self.processor = load(self.model_id, options.get("revision"), bool(options.get("allow_pickle")),
                                          self.device)
        self.revision = model_revision(self.model_id, self.model)
        self.version = f"{VERSION}+{self.model_id}@{self.revision or 'unknown'}"
        self.texts: dict = {}  # prompt -> its normalized text embedding (text_image_scores)

    def score(self, images: Sequence[Any], runs: Sequence[Any]) -> list[float]:
        prompts = [run.prompt for run in runs]
        if len(prompts) != len(images):
            raise MetricError(f"clip_score: {len(images)} images but {len(prompts)} runs")
        return text_image_scores(self.model, self.processor, self.device, images, prompts, self.batch_size,
                                 lambda model: 100.0, self.texts)


def device_for(device: str) -> str:
    """The torch device a metric scores on: the sweep's device, ``auto`` resolved."""
    want = (device or "cpu").lower()
    if want == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


def load(model_id: str, revision: str | None, allow_pickle: bool, device: str, metric: str = "clip_score",
         processor_id: str | None = None):
    """CLIPModel and a CLIPProcessor (tokenizer + PIL image processor) from a hub id or folder (the processor
    from ``processor_id`` when given). Shared by the CLIP-based metrics (pickscore, aesthetic): a missing model
    is one MetricError line naming ``metric``."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPProcessor

    from tracker.engine import loadguard

    kwargs = {"revision": revision} if revision else {}
    try:
        with loadguard.loading():  # one model load at a time in the process (see loadguard)
            model = CLIPModel.from_pretrained(model_id, use_safetensors=not allow_pickle or None, **kwargs)
    except (OSError, ValueError) as e:
        raise MetricError(_not_found(model_id, allow_pickle, e, metric)) from None
    proc_id, proc_kwargs = (processor_id, {}) if processor_id else (model_id, kwargs)
    try:
        with loadguard.loading():
            processor = CLIPProcessor(image_processor=AutoImageProcessor.from_pretrained(proc_id, backend="pil",
                                                                                         **proc_kwargs),
                                      tokenizer=AutoTokenizer.from_pretrained(proc_id, **proc_kwargs))
    except (OSError, ValueError) as e:
        raise MetricError(_not_found(proc_id, allow_pickle, e, metric, "CLIP processor")) from None
    return model.to(device).eval(), processor


def _not_found(model_id: str, allow_pickle: bool, error: Exception, metric: str = "clip_score",
               what: str = "CLIP model") -> str:
    where = f"the folder {model_id}" if Path(model_id).expanduser().is_dir() else f"the Hugging Face model {model_id!r}"
    if Path(model_id).expanduser().is_dir():
        fix = "save a CLIPModel and CLIPProcessor there with save_pretrained"
        if not allow_pickle and "safetensors" in str(error).lower():
            fix = f"it has no safetensors weights; convert them, or set allow_pickle: true in metric_options.{metric}"
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        fix = (f"download it once with `hf download {model_id}` on a machine with network access"
               + (" (HF_HUB_OFFLINE is set, so nothing is downloaded now)" if offline else "")
               + f", or point metric_options.{metric}.{'processor' if 'processor' in what else 'model'} at a local "
               f"CLIP folder")
    return f"metric {metric}: cannot load {what} from {where}: {fix}"


def model_revision(model_id: str, model) -> str | None:
    """The hub commit hash of the weights, or ``sha256:...`` over a local folder's files."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        from tracker.engine.machine import _folder_hash

        return _folder_hash(folder)
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return commit
    from huggingface_hub import try_to_load_from_cache  # transformers 5 does not set _commit_hash: ask the cache

    try:
        path = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id has no revision
        return None
    return Path(path).parent.name if isinstance(path, str) else None


def text_image_scores(model, processor, device: str, images: Sequence[Any], prompts: Sequence[str], batch_size: int,
                      scale, texts: dict | None = None) -> list[float]:
    """``scale(model)`` times the cosine of each image's and its prompt's CLIP embeddings, in batches (the
    scorers built on a CLIP model: ``clip_score`` scales by 100, ``pickscore`` by the model's logit scale).

    Each distinct prompt is encoded once: ``texts`` (the metric's own dict, kept across batches) maps a prompt to
    its normalized text embedding, so a sweep's seeds of one prompt cost one text encoding, not one each (a
    CLIP-B text tower costs about a third of its image tower at a prompt's length)."""
    import torch

    texts = {} if texts is None else texts
    out: list[float] = []
    for i in range(0, len(images), batch_size):
        batch = list(prompts[i:i + batch_size])
        have = {p: texts.get(p) for p in batch}  # this batch's own: another writer thread may clear ``texts``
        new = [p for p, e in have.items() if e is None]
        pixels = processor(images=[im.convert("RGB") for im in images[i:i + batch_size]],
                           return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode():
            if new:
                tokens = processor(text=new, return_tensors="pt", padding=True, truncation=True)
                encoded = model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                                  attention_mask=tokens["attention_mask"].to(device)).pooler_output
                have.update(zip(new, torch.nn.functional.normalize(encoded.float(), dim=-1)))
                if len(texts) + len(new) > TEXT_CACHE:
                    texts.clear()
                texts.update((p, have[p]) for p in new)
            image = model.get_image_features(pixel_values=pixels).pooler_output
            factor = scale(model)
            text = torch.stack([have[p] for p in batch])
            image = torch.nn.functional.normalize(image.float(), dim=-1)
            out.extend((factor * (text * image).sum(dim=-1)).cpu().tolist())
    return out
