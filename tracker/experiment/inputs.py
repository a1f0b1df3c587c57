"""Input images of image-conditioned runs: ``image`` (img2img and inpainting), ``mask_image`` (inpainting),
``control_image`` (ControlNet) and ``ip_adapter_image`` (IP-Adapter).

Content-addressed: an experiment file names an image by its path (relative to the file, or absolute); the parser
reads it ONCE (``read``: bounded in bytes and pixels, decoded to prove it is an image) and from then on the run
only holds its sha256. A sweep copies the bytes it read into the workspace (``store``: ``<home>/inputs/<sha256>.<ext>``,
written atomically with the umask's mode, never overwriting) and the engine, ``reproduce`` and the report read
that copy by its hash (``find`` / ``load``); a path outside the workspace is never read again.

Pure: Pillow only (imported lazily), no torch.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tracker import limits
from tracker.errors import TrackerError

IMAGE_FIELDS = ("image", "mask_image", "control_image", "ip_adapter_image")
# every setting of image-conditioned runs: the images, their numbers, the extra models
CONDITIONING = IMAGE_FIELDS + ("strength", "controlnet_conditioning_scale", "control_guidance_start",
                               "control_guidance_end", "ip_adapter_scale", "denoising_end", "denoising_start",
                               "controlnet", "ip_adapter", "refiner")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
# Pillow format -> the extension the workspace copy gets (the formats diffusers' image processors read)
FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp"}
EXTENSIONS = tuple(dict.fromkeys(FORMATS.values()))


class InputError(Exception):
    """An input image that cannot be used (the parser names the file and field around ``str(e)``)."""


class MissingInput(TrackerError):
    """An input image's hash that is not in the workspace (``reproduce`` of a PNG made elsewhere)."""


@dataclass(frozen=True)
class InputImage:
    """One input image as read: its hash, what it is, and its bytes (kept until a sweep stores them)."""

    sha256: str
    ext: str
    width: int
    height: int
    source: str  # the path as the file wrote it
    data: bytes = field(default=b"", repr=False, compare=False)

    @property
    def name(self) -> str:
        """The workspace copy's file name."""
        return f"{self.sha256}.{self.ext}"


def read(text: str, base_dir: Path | None) -> InputImage:
    """Read and check one input image named in an experiment file; InputError with the reason."""
    p = Path(text).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    try:
        if not p.exists():
            raise InputError("no such file")
        if p.is_dir():
            raise InputError("is a folder, not an image file")
        size = p.stat().st_size
        if size > limits.MAX_INPUT_IMAGE_BYTES:
            raise InputError(f"is {size} bytes; an input image may have at most {limits.MAX_INPUT_IMAGE_BYTES} "
                             f"(tracker.limits.MAX_INPUT_IMAGE_BYTES)")
        with p.open("rb") as fh:
            data = fh.read(limits.MAX_INPUT_IMAGE_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot be read ({e.strerror or e})") from None
    return from_bytes(data, text)


def from_bytes(data: bytes, source: str = "") -> InputImage:
    """Check bytes as an input image (size bounds, a format diffusers reads, pixels that decode)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.MAX_INPUT_IMAGE_BYTES:
        raise InputError(f"is more than {limits.MAX_INPUT_IMAGE_BYTES} bytes (tracker.limits.MAX_INPUT_IMAGE_BYTES)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
                if fmt not in FORMATS:
                    raise InputError(f"is a {fmt} image; input images may be {', '.join(FORMATS)}")
                if w * h > limits.MAX_INPUT_IMAGE_PIXELS:
                    raise InputError(f"is {w}x{h} pixels; an input image may have at most "
                                     f"{limits.MAX_INPUT_IMAGE_PIXELS} (tracker.limits.MAX_INPUT_IMAGE_PIXELS)")
                im.load()
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"is not an image file Pillow can read ({', '.join(FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise InputError(f"is not an image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return InputImage(hashlib.sha256(data).hexdigest(), FORMATS[fmt], w, h, source, data)


def store(images: Iterable[InputImage], folder: Path) -> list[Path]:
    """Copy input images into the workspace's ``inputs`` folder once each (atomically, with the umask's mode);
    a file already there under its hash is left as it is (content-addressed: it holds the same bytes)."""
    from tracker.fsutil import atomic_file

    out = []
    for img in images:
        target = Path(folder) / img.name
        if not target.is_file():
            if not img.data:
                raise MissingInput(f"input image {img.sha256} ({img.source}): its bytes were not kept; parse the "
                                   f"experiment file again")
            with atomic_file(target, durable=True) as fh:
                fh.write(img.data)
        out.append(target)
    return out


def find(folder: Path | None, sha256: str) -> Path | None:
    """The workspace copy of an input image, or None."""
    if folder is None or not HASH_RE.match(sha256 or ""):
        return None
    for ext in EXTENSIONS:
        p = Path(folder) / f"{sha256}.{ext}"
        if p.is_file():
            return p
    return None


def require(folder: Path | None, sha256: str, field_name: str = "image", where: str = "") -> Path:
    """``find``, or a one-line MissingInput naming the hash."""
    p = find(folder, sha256)
    if p is None:
        at = f"{where}: " if where else ""
        raise MissingInput(f"{at}{field_name}: input image {sha256} is not in the workspace ({folder}); copy it "
                           f"there as {sha256}.png (or run the experiment that used it in this workspace)")
    return p


def load(folder: Path | None, sha256: str, field_name: str = "image", where: str = "") -> Any:
    """The input image as a PIL image (RGB), read from the workspace by its hash and checked against it."""
    from PIL import Image

    p = require(folder, sha256, field_name, where)
    data = p.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise MissingInput(f"{where + ': ' if where else ''}{field_name}: {p} does not hold the bytes of input "
                           f"image {sha256} (it was modified); restore it")
    try:
        from_bytes(data, str(p))
    except InputError as e:
        raise MissingInput(f"{p}: {e}") from None
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def unused(settings: Any, name: str) -> bool:
    """A conditioning setting a run does not use: at its default, or strength without an image (left out of the
    report's recipe table and MLflow's params, so a text-to-image run shows none of them)."""
    if name not in CONDITIONING:
        return False
    if name == "strength":
        return not settings.image
    return getattr(settings, name) == type(settings).__dataclass_fields__[name].default


def hashes_of(settings: Any) -> list[tuple[str, str]]:
    """(field, sha256) of every input image of one run's Settings, in field order."""
    out = []
    for name in IMAGE_FIELDS:
        v = getattr(settings, name, None)
        for h in (v if isinstance(v, tuple) else (v,)):
            if h:
                out.append((name, h))
    return out
