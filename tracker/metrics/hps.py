"""``hps``: Human Preference Score v2.1 (Wu et al., 2023): an open_clip ViT-H-14 fine-tuned on human preferences.

The score is the cosine similarity of the prompt's and the image's open_clip embeddings (about 0.25-0.35 on real
images), as HPSv2's own ``score`` does. HPS v2.1 ships as a PyTorch pickle (``HPS_v2.1_compressed.pt`` in the
Hugging Face repo ``xswu/HPSv2``, a ``state_dict`` for open_clip's ``ViT-H-14``): it is read only with
``allow_pickle: true``; a checkpoint converted to ``.safetensors`` (docs/metrics.md) needs no pickle. open_clip
is an extra (``pip install 'prompt-tracker[hps]'``; install the torchvision build matching your torch first,
or pip replaces torch); without it the metric is one line saying so.

Options (``metric_options: {hps: {...}}``): ``checkpoint`` (a local file; default: ``HPS_v2.1_compressed.pt``
of ``xswu/HPSv2`` from the Hugging Face cache, downloaded when online), ``arch`` (open_clip architecture, default
``ViT-H-14``), ``batch_size`` (default 16), ``allow_pickle``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from tracker.metrics import MetricError
from tracker.metrics import clip
from tracker.metrics.pickscore import checked_options

HUB_REPO, HUB_FILE = "xswu/HPSv2", "HPS_v2.1_compressed.pt"
DEFAULT_ARCH = "ViT-H-14"
VERSION = "1"
OPTIONS = ("checkpoint", "arch", "batch_size", "allow_pickle")
EXTRA = ("metric 'hps' needs open_clip: pip install 'prompt-tracker[hps]' (open_clip_torch; install the torchvision "
         "build matching your torch first, or pip replaces torch)")


def import_open_clip():
    """open_clip, or one MetricError line: not installed (the extra), or installed beside a torchvision that does not
    load with this torch (PyPI's Linux torchvision is built for CUDA torch: beside a CPU torch its import fails with
    ``operator torchvision::nms does not exist``)."""
    try:
        import open_clip
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] not in ("open_clip", "timm", "ftfy"):
            return _broken(e)
        raise MetricError(EXTRA) from None
    except (ImportError, RuntimeError, OSError) as e:
        return _broken(e)
    return open_clip


def _broken(error: Exception):
    import torch

    try:
        from importlib.metadata import version

        tv = version("torchvision")
    except Exception:  # noqa: BLE001 -- not installed: named as such
        tv = "not installed"
    first = (str(error).splitlines() or [""])[0]
    raise MetricError(f"metric 'hps': open_clip is installed but cannot be imported ({type(error).__name__}: {first}); "
                      f"torch is {torch.__version__}, torchvision {tv}: install the torchvision build made for this "
                      f"torch (for a CPU torch it is on PyTorch's CPU wheel index, not PyPI)") from None


def checkpoint_path(option: Any) -> Path:
    """The checkpoint file: the option's path, or HPS v2.1 from the Hugging Face cache (offline honoured)."""
    if option:
        path = Path(str(option)).expanduser()
        if not path.is_file():
            raise MetricError(f"metric 'hps': no checkpoint file {path} (looked at {path.resolve()}); get "
                              f"{HUB_FILE} with `hf download {HUB_REPO} {HUB_FILE}`")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(HUB_REPO, HUB_FILE))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise MetricError(f"metric 'hps': {HUB_FILE} of {HUB_REPO!r} is not in the Hugging Face cache "
                          f"({type(e).__name__}); download it once with `hf download {HUB_REPO} {HUB_FILE}` on a "
                          f"machine with network access" + (" (HF_HUB_OFFLINE is set)" if offline else "")
                          + ", or set metric_options.hps.checkpoint to a local file") from None


def read_checkpoint(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """The state dict: a safetensors file, or (only with ``allow_pickle``) HPS's pickle ``{"state_dict": ...}``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 -- one line
            raise MetricError(f"metric 'hps': checkpoint {path} is not a readable safetensors file: {e}") from None
    if not allow_pickle:
        raise MetricError(f"metric 'hps': checkpoint {path} is a pickle (HPS v2.1 ships as one); set allow_pickle: "
                          f"true in metric_options.hps if you trust it, or convert it to safetensors (docs/metrics.md)")
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- one line
        raise MetricError(f"metric 'hps': cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise MetricError(f"metric 'hps': checkpoint {path} holds a {type(data).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in data.items()}


class HpsScore:
    name = "hps"
    higher_is_better = True

    def __init__(self, options: Mapping[str, Any] | None = None, device: str = "cpu"):
        options, self.batch_size = checked_options(self.name, options, OPTIONS)
        open_clip = import_open_clip()
        self.arch = str(options.get("arch") or DEFAULT_ARCH)
        path = checkpoint_path(options.get("checkpoint"))
        state = read_checkpoint(path, bool(options.get("allow_pickle")))
        self.device = clip.device_for(device)
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(
                self.arch, pretrained=None, precision="fp32", device="cpu", pretrained_text=False)
            model.load_state_dict(state)
        except RuntimeError as e:
            raise MetricError(f"metric 'hps': checkpoint {path} does not fit open_clip's {self.arch}: "
                              f"{str(e).splitlines()[0]}") from None
        self.model = model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(self.arch)
        self.version = f"{VERSION}+{self.arch}@sha256:{_digest(path)}"

    def score(self, images: Sequence[Any], runs: Sequence[Any]) -> list[float]:
        prompts = [run.prompt for run in runs]
        out: list[float] = []
        for i in range(0, len(images), self.batch_size):
            out.extend(self._batch(list(images[i:i + self.batch_size]), prompts[i:i + self.batch_size]))
        return out

    def _batch(self, images: list, prompts: list[str]) -> list[float]:
        import torch

        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        tokens = self.tokenizer(prompts).to(self.device)
        with torch.inference_mode():
            image = self.model.encode_image(pixels, normalize=True).float()
            text = self.model.encode_text(tokens, normalize=True).float()
        return (image * text).sum(dim=-1).cpu().tolist()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
