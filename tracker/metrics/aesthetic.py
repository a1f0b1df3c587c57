"""``aesthetic``: the LAION aesthetic predictor: a CLIP image embedding (L2-normalized) through a small head.

The head is a chain of linear layers read from a safetensors file, in the layouts LAION published: the
"improved aesthetic predictor" (``sac+logos+ava1-l14-linearMSE``: ``layers.0``, ``layers.2``, ``layers.4``,
``layers.6``, ``layers.7``: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between them and no activations, so
at inference the layers apply one after the other) and the first predictor (``sa_0_4_vit_l_14_linear``: one
``weight``/``bias``, 768 -> 1). Both were trained on ``openai/clip-vit-large-patch14`` image embeddings and give
a rating on a 1-10 scale. LAION ships them as PyTorch pickles (``.pth``): convert once to safetensors (see
docs/metrics.md) or set ``allow_pickle: true`` to read the ``.pth`` (``torch.load(weights_only=True)``).
The CLIP model loads through ``tracker.metrics.clip`` (offline, safetensors, fingerprint).

Options (``metric_options: {aesthetic: {...}}``): ``head`` (the head's file; required), ``model`` (the CLIP
model; default ``openai/clip-vit-large-patch14``), ``revision``, ``batch_size`` (default 16), ``allow_pickle``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from tracker.metrics import MetricError
from tracker.metrics import clip
from tracker.metrics.pickscore import checked_options

DEFAULT_MODEL = "openai/clip-vit-large-patch14"
VERSION = "1"
OPTIONS = ("head", "model", "revision", "batch_size", "allow_pickle")
HOW_TO_GET = ("get sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/improved-aesthetic-predictor "
              "and convert it to safetensors (docs/metrics.md, 'aesthetic')")
_LAYER = re.compile(r"^(?:(.*?)\.)?(\d+)\.(weight|bias)$")


def read_head(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """The head's tensors: safetensors always, a ``.pth``/``.pt`` pickle only with ``allow_pickle``."""
    if not path.is_file():
        raise MetricError(f"metric 'aesthetic': no head file {path} (looked at {path.resolve()}); {HOW_TO_GET}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 -- safetensors' own error type is not public: one line
            raise MetricError(f"metric 'aesthetic': head {path} is not a readable safetensors file: {e}") from None
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise MetricError(f"metric 'aesthetic': head {path}: expected a .safetensors file (or .pth with allow_pickle)")
    if not allow_pickle:
        raise MetricError(f"metric 'aesthetic': head {path} is a pickle; convert it to safetensors "
                          f"(docs/metrics.md) or set allow_pickle: true in metric_options.aesthetic")
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable pickle is one line
        raise MetricError(f"metric 'aesthetic': cannot read head {path}: {type(e).__name__}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise MetricError(f"metric 'aesthetic': head {path} holds a {type(data).__name__}, not a state dict")
    return data


def head_layers(tensors: Mapping[str, Any], where: str) -> list[tuple[Any, Any]]:
    """(weight, bias) of each linear layer in order: ``[prefix.]N.weight`` by N, or a single ``weight``/``bias``."""
    if set(tensors) == {"weight", "bias"}:
        return [(tensors["weight"], tensors["bias"])]
    layers: dict[int, dict[str, Any]] = {}
    prefixes = set()
    for name, t in tensors.items():
        m = _LAYER.match(name)
        if m is None:
            raise MetricError(f"metric 'aesthetic': head {where}: unexpected tensor {name!r}; expected the LAION "
                              f"layouts layers.N.weight/bias or weight/bias")
        prefixes.add(m.group(1))
        layers.setdefault(int(m.group(2)), {})[m.group(3)] = t
    if len(prefixes) != 1 or not layers or any(set(v) != {"weight", "bias"} for v in layers.values()):
        raise MetricError(f"metric 'aesthetic': head {where}: expected one chain of linear layers with a weight and a "
                          f"bias each; found {', '.join(sorted(tensors))}")
    out = [(layers[i]["weight"], layers[i]["bias"]) for i in sorted(layers)]
    for (w1, _), (w2, _) in zip(out, out[1:]):
        if w1.shape[0] != w2.shape[1]:
            raise MetricError(f"metric 'aesthetic': head {where}: layer sizes do not chain "
                              f"({tuple(w1.shape)} then {tuple(w2.shape)})")
    if out[-1][0].shape[0] != 1:
        raise MetricError(f"metric 'aesthetic': head {where}: the last layer gives {out[-1][0].shape[0]} values, not 1")
    return out


class AestheticScore:
    name = "aesthetic"
    higher_is_better = True

    def __init__(self, options: Mapping[str, Any] | None = None, device: str = "cpu"):
        options, self.batch_size = checked_options(self.name, options, OPTIONS)
        if not options.get("head"):
            raise MetricError(f"metric 'aesthetic': metric_options.aesthetic.head is required (the predictor's "
                              f"weights); {HOW_TO_GET}")
        head = Path(str(options["head"])).expanduser()
        allow_pickle = bool(options.get("allow_pickle"))
        layers = head_layers(read_head(head, allow_pickle), str(head))
        self.model_id = str(options.get("model") or DEFAULT_MODEL)
        self.device = clip.device_for(device)
        self.model, self.processor = clip.load(self.model_id, options.get("revision"), allow_pickle, self.device,
                                               metric=self.name)
        dim = self.model.config.projection_dim
        if layers[0][0].shape[1] != dim:
            raise MetricError(f"metric 'aesthetic': head {head} takes {layers[0][0].shape[1]}-d embeddings but "
                              f"{self.model_id} gives {dim}-d ones; use the CLIP model the head was trained on")
        self.layers = [(w.float().to(self.device), b.float().to(self.device)) for w, b in layers]
        digest = hashlib.sha256(head.read_bytes()).hexdigest()[:16]
        revision = clip.model_revision(self.model_id, self.model)
        self.version = f"{VERSION}+{self.model_id}@{revision or 'unknown'}+head:sha256:{digest}"

    def score(self, images: Sequence[Any], runs: Sequence[Any]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(images), self.batch_size):
            out.extend(self._batch(list(images[i:i + self.batch_size])))
        return out

    def _batch(self, images: list) -> list[float]:
        import torch

        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            x = self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output.float()
            x = torch.nn.functional.normalize(x, dim=-1)
            for w, b in self.layers:
                x = torch.nn.functional.linear(x, w, b)
        return x[:, 0].cpu().tolist()
