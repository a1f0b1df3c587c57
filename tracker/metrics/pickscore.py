"""``pickscore``: PickScore (Kirstain et al., 2023), a CLIP model fine-tuned on human preferences (Pick-a-Pic).

The score is the model's logit for the prompt and the image: ``logit_scale.exp()`` times the cosine similarity of
their CLIP embeddings (about 18-23 on real images), as in PickScore's reference code. The model is a transformers
``CLIPModel`` folder (default ``yuvalkirstain/PickScore_v1``) and its processor (a tokenizer and an image
processor; default ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, the processor PickScore was trained with, or the
model's own folder when ``model`` is set). Loading, offline handling, safetensors-only weights and the version's
fingerprint are ``tracker.metrics.clip``'s. Options (``metric_options: {pickscore: {...}}``): ``model``,
``processor``, ``revision``, ``batch_size`` (default 16), ``allow_pickle``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tracker.metrics import MetricError
from tracker.metrics import clip

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
VERSION = "1"
OPTIONS = ("model", "processor", "revision", "batch_size", "allow_pickle")


def checked_options(metric: str, options: Mapping[str, Any] | None, known: Sequence[str]) -> tuple[dict, int]:
    """The options as a dict and ``batch_size``; an unknown option or a bad batch size is one MetricError line."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise MetricError(f"metric {metric!r}: unknown option {unknown[0]!r}; known: {', '.join(known)}")
    batch = options.get("batch_size", 16)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MetricError(f"metric {metric!r}: batch_size must be a positive integer but is {batch!r}")
    return options, batch


class PickScore:
    name = "pickscore"
    higher_is_better = True

    def __init__(self, options: Mapping[str, Any] | None = None, device: str = "cpu"):
        options, self.batch_size = checked_options(self.name, options, OPTIONS)
        self.model_id = str(options.get("model") or DEFAULT_MODEL)
        processor = options.get("processor") or (DEFAULT_PROCESSOR if self.model_id == DEFAULT_MODEL else None)
        self.device = clip.device_for(device)
        self.model, self.processor = clip.load(self.model_id, options.get("revision"), bool(options.get("allow_pickle")),
                                               self.device, metric=self.name,
                                               processor_id=str(processor) if processor else None)
        revision = clip.model_revision(self.model_id, self.model)
        self.version = f"{VERSION}+{self.model_id}@{revision or 'unknown'}"
        if processor:
            self.version += f"+processor:{processor}"
        self.texts: dict = {}  # prompt -> its normalized text embedding (clip.text_image_scores)

    def score(self, images: Sequence[Any], runs: Sequence[Any]) -> list[float]:
        return clip.text_image_scores(self.model, self.processor, self.device, images, [run.prompt for run in runs],
                                      self.batch_size, lambda model: model.logit_scale.exp().float(), self.texts)
