"""What a PNG may decide when a run is rebuilt from it: its settings, each checked by the experiment file's own
normalizers (``checked_settings``), and what only the command line may decide (``Trust``): a PNG is data from
anywhere and never switches safety off (pickle weights, fetching from the Hub) nor asks for unbounded work.

Pure: no torch. Used by ``tracker.reproduce.regenerate`` (a recipe chunk) and ``tracker.reproduce.a1111`` (a ``parameters`` chunk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from tracker import limits
from tracker.experiment import model_refs as models
from tracker.errors import TrackerError
from tracker.experiment.settings import NORMALIZERS, Settings


# What a PNG decides as an experiment file would, each value checked by its normalizer: every setting (a new one
# too) but those decided in ``checked_settings`` by name and those only the command line or file decides.
_DECIDED_BY_NAME = ("model", "vae", "scheduler", "size", "width", "height", "lora", "allow_pickle", "device")
_NOT_FROM_A_PNG = ("compile", "attention")  # how it runs here (compile time, a backend this machine may lack)
PNG_SETTINGS = tuple(n for n in NORMALIZERS if n not in _DECIDED_BY_NAME + _NOT_FROM_A_PNG)


@dataclass(frozen=True)
class Trust:
    """What only the command line may decide: a PNG is data from anywhere and never switches safety off
    (pickle weights, fetching from the Hub) nor asks for unbounded work."""

    model: str | None = None  # --model: replaces the PNG's model (and may be a hub id)
    vae: str | None = None  # --vae
    allow_pickle: bool = False  # --allow-pickle
    max_steps: int = limits.MAX_REPRODUCE_STEPS  # --max-steps
    max_pixels: int = limits.MAX_IMAGE_PIXELS  # --max-pixels



def checked_settings(values: Mapping[str, Any], where: str, trust: Trust, notes: list[str],
                     base_dir: Path | None = None) -> Settings:
    """Settings from a PNG, validated by the experiment file's own checks; safety and cost from ``trust``.

    A size that is not a multiple of 8 is rounded down (with a note), as diffusers' pipelines need it.
    """
    values = dict(values)
    out: dict[str, Any] = {}

    def err(field: str) -> Callable[[str], None]:
        def fail(message: str) -> None:
            raise TrackerError(f"{where}: {field}: {message}")
        return fail

    for name in PNG_SETTINGS:
        if values.get(name) is not None:
            v = values[name]
            if name == "scheduler_options" and isinstance(v, (list, tuple)):
                v = dict(v)
            out[name] = NORMALIZERS[name](v, err(name))
    if values.get("scheduler") is not None:  # resolved like a file's: the options a name implies, the PNG's over them
        choice = NORMALIZERS["scheduler"](values["scheduler"], err("scheduler"))
        options = {**dict(choice.options), **dict(out.get("scheduler_options", ()))}
        out["scheduler"], out["scheduler_options"] = choice.class_name, tuple(sorted(options.items()))
    width, height = values.get("width"), values.get("height")
    if width is not None or height is not None:
        out["width"], out["height"] = _rounded_size(width, height, where, notes)
    _check_cost(out, where, trust)
    if values.get("lora"):
        out["lora"] = _trusted_lora(values["lora"], where, trust, base_dir, notes)
    if values.get("allow_pickle") and not trust.allow_pickle:
        notes.append("allow_pickle: true in the PNG (ignored: only --allow-pickle loads pickle weights)")
    out["allow_pickle"] = trust.allow_pickle
    if values.get("device") not in (None, "auto"):
        notes.append(f"device: {values['device']} (ignored: the device comes from --device)")
    out["model"] = trust.model or _trusted_model(values.get("model"), where, "model", "--model", base_dir)
    if trust.vae:
        out["vae"] = trust.vae
    elif values.get("vae") not in (None, "default"):
        try:
            out["vae"] = _trusted_model(values["vae"], where, "vae", "--vae", base_dir)
        except TrackerError:
            hub = models.resolve(str(values["vae"]), base_dir).kind == "hub"
            why = f"a Hub id is fetched only with --vae {values['vae']}" if hub else "not a local folder"
            notes.append(f"VAE: {values['vae']} ({why}; used the model's own VAE)")
    return Settings(**out)


def _rounded_size(width: Any, height: Any, where: str, notes: list[str]) -> tuple[int, int]:
    dims = []
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 8:
            raise TrackerError(f"{where}: {name}: must be an integer of at least 8 pixels but is {v!r}")
        dims.append(v)
    w, h = (d - d % 8 for d in dims)
    if (w, h) != tuple(dims):
        notes.append(f"Size: {dims[0]}x{dims[1]} rounded down to {w}x{h} (diffusers needs multiples of 8)")
    return w, h


def _check_cost(values: Mapping[str, Any], where: str, trust: Trust) -> None:
    steps = values.get("steps")
    if steps is not None and steps > trust.max_steps:
        raise TrackerError(f"{where}: steps: {steps} is more than {trust.max_steps}; pass --max-steps {steps} "
                           "to allow it")
    w, h = values.get("width") or 0, values.get("height") or 0
    if w * h > trust.max_pixels:
        raise TrackerError(f"{where}: size: {w}x{h} is more than {trust.max_pixels} pixels; pass --max-pixels "
                           f"{w * h} to allow it")


def _trusted_lora(raw: Any, where: str, trust: Trust, base_dir: Path | None, notes: list[str]) -> tuple:
    """A PNG's adapters through the experiment file's own parser (``lora.parse``): each a local .safetensors file
    (pickle only with --allow-pickle), or a Hub adapter only from the local Hugging Face cache (a PNG never makes
    the tracker fetch). Its sha256 is the file's own; a differing one in the PNG is noted."""
    from tracker.prompts import lora

    def fail(field: str, message: str) -> None:
        raise TrackerError(f"{where}: {field}: {message}")

    if not isinstance(raw, (list, tuple)):
        fail("lora", f"must be a list of adapters but is {raw!r}")
    recorded, as_written = [], []  # the recipe's form (source, weight_name), and as an experiment file has it
    for i, a in enumerate(raw):
        try:
            a = dict(a)  # a mapping, or the (field, value) pairs of a recipe read back
        except (TypeError, ValueError):
            fail(f"lora[{i}]", f"must be a mapping with name, scale, sha256 and source but is {a!r}")
        recorded.append(a)
        source = a.get("source")
        if not isinstance(source, str) or not source.strip():
            fail(f"lora[{i}].source", f"must be the adapter's file (or Hub id) but is {source!r}")
        where_from = {"hub": source, "weight_name": a["weight_name"]} if a.get("weight_name") else {"path": source}
        as_written.append({**where_from, **{k: a[k] for k in ("name", "scale") if k in a}})
    adapters = lora.parse(as_written, base_dir, trust.allow_pickle, fail)
    for a, adapter in zip(recorded, adapters):
        made = dict(adapter)
        if a.get("sha256") not in (None, made["sha256"]):
            notes.append(f"LoRA {made['name']}: {made['source']} is not the file the image was made with "
                         f"(sha256 {str(a['sha256'])[:12]}...); used it all the same")
    return adapters


def _trusted_model(name: Any, where: str, field: str, option: str, base_dir: Path | None) -> str:
    """A built-in name or an existing local folder; a hub id only through the command line."""
    if not isinstance(name, str) or not name.strip():
        raise TrackerError(f"{where}: {field}: the PNG names none; pass {option} (a builtin name, a local folder "
                           "or a hub id)")
    ref = models.resolve(name, base_dir)
    if ref.kind == "builtin":
        return name
    if ref.kind == "file":
        return _trusted_file(name, ref, where, field, option, base_dir)
    if ref.kind == "local" and Path(ref.location).is_dir():
        return ref.location
    if ref.kind == "hub" and re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise TrackerError(f"{where}: {field}: {name!r} is a Hugging Face Hub id; a PNG cannot make the tracker "
                           f"fetch from the Hub: pass {option} {name} to use it")
    raise TrackerError(f"{where}: {field}: {name!r} is not a builtin model ({', '.join(models.BUILTIN)}), a local "
                       f"folder or a hub id (org/name); pass {option}")


def _trusted_file(name: str, ref: models.ModelRef, where: str, field: str, option: str,
                  base_dir: Path | None) -> str:
    """A single-file model or VAE named by a PNG: the file here (pickle only with --allow-pickle, never asked for
    by the PNG), and its config a local folder or a Hub id already in the Hugging Face cache (never fetched)."""
    from tracker.experiment import single_file

    check = single_file.check_checkpoint if field == "model" else single_file.check_vae_file
    try:
        check(name, base_dir, False)
        if ref.config:
            cfg = single_file.config_of(ref.config, base_dir)
            if cfg.hub and cfg.folder is None:
                raise single_file.SingleFileError(f"config {ref.config!r} is a Hub id not in the Hugging Face cache; "
                                                  f"a PNG cannot make the tracker fetch from the Hub")
            return single_file.canonical(ref.location, cfg.location)
    except single_file.SingleFileError as e:
        raise TrackerError(f"{where}: {field}: {single_file.split(name)[0]!r} {e}; pass {option}") from None
    return ref.location
