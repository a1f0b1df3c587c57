"""Every image carries its recipe: PNG text chunks written and read here. Pillow only; no torch.

Two chunks:

- ``parameters``: AUTOMATIC1111's "infotext", so the PNG-info readers of the community's tools (A1111,
  ComfyUI loaders, civitai, ...) show the prompt and settings. First the prompt, then
  ``Negative prompt: ...`` when there is one, then one line of ``Key: value`` pairs.
- ``prompt-tracker``: the full recipe as JSON (every field of the run, key, experiment, versions, device).
  This one is authoritative; ``parameters`` is lossy by design (A1111's format strips each prompt line and
  cannot tell a prompt line that starts with ``Negative prompt:`` from the negative prompt).

The parser follows A1111's published ``parse_generation_parameters`` (modules/infotext_utils.py) so that
what we write reads back the way their tools read it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tracker import limits
from tracker.errors import NotFoundError, TrackerError
from tracker.prompts import lora

PARAMETERS_CHUNK = "parameters"
RECIPE_CHUNK = "prompt-tracker"

# A1111: modules/infotext_utils.py ``re_param_code``
A1111_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
NEGATIVE_PREFIX = "Negative prompt:"
# zlib level and strategy of the images a sweep writes. Measured at 512x512 on three photos (bench/png_level.py,
# 2-core CPU): level 1 with zlib's Z_RLE strategy ("almost as fast as Huffman-only, but better compression for
# PNG image data", zlib's manual) encodes in ~27 ms against ~74 ms for Pillow's default (level 6), for files ~4%
# larger; the pixels are the same. The writing stage must keep up with the accelerator, so speed wins.
PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_TYPE = zlib.Z_RLE

@dataclass(frozen=True)
class A1111Params:
    """A parsed ``parameters`` chunk: the prompts and the raw ``Key: value`` pairs in their order."""

    prompt: str
    negative_prompt: str
    settings: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- writing


def quote(value: Any) -> str:
    """A1111's ``quote()``: JSON-quote a value that holds ``,``, ``:`` or a newline.

    Also quotes what A1111's parser would not give back as written (it does not): a value that starts with
    ``"`` (it would be unquoted) or has white space at either end (it would be stripped).
    """
    text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"') or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def _number(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def short_hash(h: Any) -> str | None:
    """A1111's 10-character hash from a revision ("sha256:<hex>" content hash or a hub commit hash)."""
    return str(h).split(":", 1)[-1][:10] if h else None


def _sampler(recipe: Mapping[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """(Sampler, Schedule type, scheduler options the sampler name does not already say)."""
    from tracker.experiment.schedulers import DEFAULT, SchedulerChoice, a1111_known

    options = tuple(sorted(dict(recipe.get("scheduler_options") or {}).items()))
    choice = SchedulerChoice(recipe.get("scheduler") or DEFAULT, options).made_with(recipe.get("scheduler_config"))
    pair = choice.sampler()
    if pair is None or not a1111_known(pair[0]):
        return None, None, dict(choice.options)  # a class no A1111 name reads back: the recipe chunk says it
    return pair[0], choice.schedule_type, choice.extra_options()


def a1111_call(call: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(``Clip skip``, ``Call``): A1111's own field where there is one (its Clip skip N is diffusers' clip_skip
    N-1: "skip 1" is the last layer), the other call arguments as prompt-tracker's JSON ``Call`` field."""
    call = dict(call or {})
    clip_skip = call.pop("clip_skip", None)
    skip = str(clip_skip + 1) if isinstance(clip_skip, int) and not isinstance(clip_skip, bool) else None
    if clip_skip is not None and skip is None:
        call["clip_skip"] = clip_skip
    return skip, (json.dumps(call, sort_keys=True) if call else None)


def _rng(device: Any) -> str | None:
    """A1111's ``RNG`` for a generator device: ``CPU`` (A1111 otherwise draws GPU noise when it pastes the PNG),
    ``GPU`` for a CUDA generator; None for others (A1111 has no such choice)."""
    device = str(device or "").lower()
    return "CPU" if device == "cpu" else "GPU" if device.startswith("cuda") else None


def _inputs(recipe: Mapping[str, Any]) -> str | None:
    """The run's input images as ``field=sha256`` (informational: the recipe chunk is what reproduce reads)."""
    pairs = [(name, h) for name in ("image", "mask_image", "control_image", "ip_adapter_image")
             for h in (recipe.get(name) if isinstance(recipe.get(name), list) else [recipe.get(name)]) if h]
    return " ".join(f"{name}={h}" for name, h in pairs) or None


def _conditioning(recipe: Mapping[str, Any]) -> dict[str, str | None]:
    """A1111's fields for ControlNet (sd-webui-controlnet's ``ControlNet N``: the control image is given
    preprocessed, so ``Module: none``) and the refiner (``Refiner``, ``Refiner switch at``: A1111's fraction of the
    steps, diffusers' ``denoising_end``); the input images themselves are named in ``Tracker inputs``."""
    out: dict[str, str | None] = {}
    scales = recipe.get("controlnet_conditioning_scale", 1.0)
    for i, name in enumerate(recipe.get("controlnet") or ()):
        weight = scales[i] if isinstance(scales, (list, tuple)) else scales
        out[f"ControlNet {i}"] = (f"Module: none, Model: {name}, Weight: {_number(weight)}, "
                                  f"Guidance Start: {_number(recipe.get('control_guidance_start') or 0)}, "
                                  f"Guidance End: {_number(recipe.get('control_guidance_end', 1.0))}")
    if recipe.get("refiner"):
        out["Refiner"] = recipe["refiner"]
        out["Refiner switch at"] = _number(recipe["denoising_end"]) if recipe.get("denoising_end") else None
    return out


def a1111_fields(recipe: Mapping[str, Any]) -> dict[str, str | None]:
    """The ``Key: value`` pairs of the parameters line, in A1111's order; None where not known."""
    sampler, schedule, extra_options = _sampler(recipe)
    clip_skip, call = a1111_call(recipe.get("call"))
    width, height = recipe.get("width"), recipe.get("height")
    vae = recipe.get("vae")
    return {
        "Steps": str(recipe["steps"]) if recipe.get("steps") is not None else None,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": _number(recipe["guidance_scale"]) if recipe.get("guidance_scale") is not None else None,
        "Seed": str(recipe["seed"]) if recipe.get("seed") is not None else None,
        "Clip skip": clip_skip,
        "Size": f"{width}x{height}" if width and height else None,
        "Model hash": short_hash(recipe.get("model_hash") or recipe.get("model_revision")),
        "Model": recipe.get("model"),
        "VAE hash": short_hash(recipe.get("vae_hash") or recipe.get("vae_revision")) if vae and vae != "default" else None,
        "VAE": vae if vae and vae != "default" else None,
        "Denoising strength": _number(recipe["strength"]) if recipe.get("image") and recipe.get("strength") else None,
        **_conditioning(recipe),
        "Tracker key": recipe.get("key"),
        "Tracker experiment": recipe.get("experiment"),
        "Tracker inputs": _inputs(recipe),
        "Dtype": recipe.get("dtype"),
        "Generator device": recipe.get("generator_device"),
        "RNG": _rng(recipe.get("generator_device")),
        "Scheduler options": json.dumps(extra_options, sort_keys=True) if extra_options else None,
        "Lora hashes": lora.a1111_hashes(recipe.get("lora") or ()),
        "Prompt syntax": recipe.get("prompt_syntax") if recipe.get("prompt_syntax") not in (None, "plain") else None,
        "Call": call,
    }


def a1111_parameters(recipe: Mapping[str, Any]) -> str:
    """The ``parameters`` chunk text for a recipe (A1111's infotext format)."""
    pairs = ", ".join(f"{k}: {quote(v)}" for k, v in a1111_fields(recipe).items() if v is not None)
    prompt = (recipe.get("prompt") or "") + lora.a1111_tags(recipe.get("lora") or ())  # A1111 puts them there
    negative = recipe.get("negative_prompt") or ""
    negative_line = f"\n{NEGATIVE_PREFIX} {negative}" if negative else ""
    return f"{prompt}{negative_line}\n{pairs}".strip()


def recipe_for(run: Any, **extra: Any) -> dict[str, Any]:
    """``run.to_recipe(**extra)``: ``PlannedRun.to_recipe`` is the one place a recipe is built."""
    return run.to_recipe(**extra)


def pnginfo(recipe: Mapping[str, Any]):
    """Both text chunks for a recipe, ready for ``Image.save(..., pnginfo=...)``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_CHUNK, a1111_parameters(recipe))
    info.add_itxt(RECIPE_CHUNK, json.dumps(recipe, ensure_ascii=False, sort_keys=True, default=str), zip=True)
    return info


def png_bytes(image, recipe: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=pnginfo(recipe), compress_level=PNG_COMPRESS_LEVEL,
               compress_type=PNG_COMPRESS_TYPE)
    return buf.getvalue()


def save_png(image, path: Path, recipe: Mapping[str, Any], fsync_folder: bool = True) -> str:
    """Write ``image`` with both chunks to ``path`` atomically; return the sha256 of the file written.

    Atomic: the bytes go to a temp file in the same folder, are fsynced, then ``os.replace``d over ``path``,
    so a crash leaves either the old file or the new one, never half a PNG; the temp file never stays.
    Durable once the folder is fsynced too: here, unless ``fsync_folder=False`` (the caller does it once
    for a batch of images, before it records them).
    """
    from tracker.fsutil import atomic_file

    data = png_bytes(image, recipe)
    with atomic_file(path, durable=True, clear_stale=True, fsync_folder=fsync_folder) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- reading


def unquote(text: str) -> str:
    """A1111's ``unquote()``: JSON-decode a value written by ``quote``; anything else stays as it is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_a1111(text: str) -> A1111Params:
    """Parse an A1111 ``parameters`` text the way A1111's ``parse_generation_parameters`` does.

    The last line is the ``Key: value`` line when the regex finds at least 3 pairs in it; every other line
    is prompt, or negative prompt from the line that starts with ``Negative prompt:`` on.
    Values stay raw strings (``Size`` stays ``WxH``), JSON-unquoted.
    """
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM_RE.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt = negative = ""
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            done_with_prompt = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    settings = {k: unquote(v) for k, v in A1111_PARAM_RE.findall(last)}
    return A1111Params(prompt, negative, settings)


def open_png(path: str | Path, max_pixels: int | None = None):
    """Open an image file or raise a one-line TrackerError (missing, a folder, not an image, too many pixels).

    The header is read first: an image larger than ``max_pixels`` (default ``limits.MAX_IMAGE_PIXELS``) is
    refused before its pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise NotFoundError(f"{path}: no such file")
    if p.is_dir():
        raise TrackerError(f"{path}: is a folder, not a PNG file")
    limit = max_pixels or limits.MAX_IMAGE_PIXELS
    try:
        im = Image.open(p)
        try:
            w, h = im.size
            if w * h > limit:
                raise TrackerError(f"{path}: is {w}x{h} pixels; at most {limit} pixels are read")
            im.load()
        except BaseException:
            im.close()
            raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise TrackerError(f"{path}: not a readable image ({e})") from None
    return im


def chunks(im) -> dict[str, str]:
    """The text chunks of an open PNG (tEXt, zTXt and iTXt, before or after the image data)."""
    text = getattr(im, "text", None)
    return {str(k): str(v) for k, v in (text if text is not None else im.info).items() if isinstance(v, str)}


def read_png(path: str | Path, max_pixels: int | None = None) -> tuple[str | None, dict | None]:
    """``(parameters text, recipe dict)`` of a PNG; None for a chunk that is not there.

    Raises a one-line TrackerError for a missing or unreadable file, a recipe chunk that is not JSON, a text
    chunk over ``limits.MAX_TEXT_CHUNK_BYTES`` or an image over ``max_pixels``.
    """
    with open_png(path, max_pixels) as im:
        text = chunks(im)
    for name in (PARAMETERS_CHUNK, RECIPE_CHUNK):
        if len(text.get(name) or "") > limits.MAX_TEXT_CHUNK_BYTES:
            raise TrackerError(f"{path}: its {name} text chunk holds {len(text[name])} characters; "
                               f"at most {limits.MAX_TEXT_CHUNK_BYTES} are read")
    return text.get(PARAMETERS_CHUNK), _recipe(text.get(RECIPE_CHUNK), path)


def _recipe(raw: str | None, path: str | Path) -> dict | None:
    if raw is None:
        return None
    try:
        recipe = json.loads(raw)
    except ValueError as e:
        raise TrackerError(f"{path}: the {RECIPE_CHUNK} chunk is not valid JSON ({e})") from None
    if not isinstance(recipe, dict):
        raise TrackerError(f"{path}: the {RECIPE_CHUNK} chunk must hold a JSON object")
    return recipe
