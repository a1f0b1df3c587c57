"""A run's pipeline settings: ``Settings`` (every field normalized), the normalizer of each setting an
experiment file may give, and the helpers that read a setting as an axis label or apply it.

Pure: no torch, no diffusers. ``tracker.experiment.parse`` parses the file with these; the plan, the store's records,
the engine, the PNG recipe and the report read ``Settings``. Adding a pipeline setting starts here (see the
README's "How it is built").
"""

from __future__ import annotations

import math

import difflib
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from tracker.experiment import model_refs as models, schedulers
from tracker.errors import SpecError

DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32",
          "float16": "float16", "fp16": "float16", "half": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")

# Settings that change speed or memory but not the image; they join a run key only when varied on an axis.
PERF_SETTINGS = ("batch_size", "attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload", "device", "compile",
                 "deterministic", "attention")
# Settings in every run key since key version 1; a setting added later joins a key only away from its default.
KEY_SETTINGS = ("model", "vae", "scheduler", "scheduler_options", "steps", "guidance_scale", "width", "height",
                "dtype", "generator_device")
NOT_IN_KEY = PERF_SETTINGS + ("allow_pickle",)  # speed, memory, safety: never the image
COMPILE_OFF = "off"
ATTENTION_DEFAULT = "default"  # the attention backend the model was loaded with (tracker.engine.attention)
ATTENTION_RE = re.compile(r"^[a-z0-9_]+$")
COMPILE_OPTIONS = {"mode": str, "fullgraph": bool, "dynamic": bool}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def column(type_name: str, *args: Any) -> dict[str, Any]:
    """A setting's field metadata: its runs column, as a SQLAlchemy type name and arguments (``"String", 40``)."""
    return {"column": (type_name, *args)}


@dataclass(frozen=True)
class Settings:
    """Every pipeline setting of one run, normalized."""

    model: str = models.DEFAULT_MODEL
    vae: str = "default"
    scheduler: str = schedulers.DEFAULT  # canonical class name, or "default" (the checkpoint's own)
    scheduler_options: tuple[tuple[str, Any], ...] = ()
    steps: int = 50
    guidance_scale: float = 7.5
    width: int = 0  # 0: the run's model's native size, resolved per run when the plan expands
    height: int = 0
    dtype: str = "float32"
    device: str = "auto"
    generator_device: str = "cpu"
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    batch_size: int | str = "auto"
    allow_pickle: bool = False
    # Settings added since: each names its runs column type (``tracker.store.tables`` makes the column from it; its
    # migration adds the same). NULL in the store: a run recorded before the setting existed (its default).
    # torch.compile: "off", or its options as "mode=default[,fullgraph=true][,dynamic=false]"
    compile: str = field(default=COMPILE_OFF, metadata=column("String", 200))  # 0005
    # plain | a1111 | compel (tracker.prompts.weighting)
    prompt_syntax: str = field(default="plain", metadata=column("String", 20))  # 0006
    # adapters, each sorted (field, value) pairs (tracker.prompts.lora); stored as a JSON list of mappings
    lora: tuple[tuple[tuple[str, Any], ...], ...] = field(default=(), metadata=column("JSON"))  # 0006
    # torch's deterministic algorithms around each pipeline call (tracker.engine.determinism)
    deterministic: bool = field(default=False, metadata=column("Boolean"))  # 0008
    # "default", or a diffusers attention backend name (tracker.engine.attention)
    attention: str = field(default=ATTENTION_DEFAULT, metadata=column("String", 40))  # 0009
    # further arguments of the pipeline's call, sorted (name, value) pairs, a list value as a tuple
    # (tracker.experiment.families checks them against the pipeline's __call__); stored as one JSON mapping
    call: tuple[tuple[str, Any], ...] = field(default=(), metadata=column("JSON"))  # 0013
    # image-conditioned runs (0015; docs/image-conditioned.md): input images by their sha256 (tracker.experiment.inputs;
    # "" or (): none), the numbers that go with them, and the extra models (model names as ``model`` takes them)
    image: str = field(default="", metadata=column("String", 64))  # img2img / inpainting source
    mask_image: str = field(default="", metadata=column("String", 64))  # inpainting: white is repainted
    control_image: tuple[str, ...] = field(default=(), metadata=column("JSON"))  # one per ControlNet
    ip_adapter_image: str = field(default="", metadata=column("String", 64))
    strength: float = field(default=0.8, metadata=column("Float"))  # (0, 1]: how much of the image is repainted
    controlnet_conditioning_scale: float | tuple[float, ...] = field(default=1.0, metadata=column("JSON"))
    control_guidance_start: float = field(default=0.0, metadata=column("Float"))
    control_guidance_end: float = field(default=1.0, metadata=column("Float"))
    ip_adapter_scale: float = field(default=1.0, metadata=column("Float"))
    denoising_end: float | None = field(default=None, metadata=column("Float"))  # base of a refiner hand-off
    denoising_start: float | None = field(default=None, metadata=column("Float"))  # where the refiner starts
    controlnet: tuple[str, ...] = field(default=(), metadata=column("JSON"))  # ControlNet models, in order
    # {path, weight_name, image_encoder, subfolder} as sorted pairs; stored as one JSON mapping
    ip_adapter: tuple[tuple[str, Any], ...] = field(default=(), metadata=column("JSON"))
    refiner: str = field(default="", metadata=column("Text"))  # an SDXL refiner model ("" none)

    def options(self) -> dict[str, Any]:
        return dict(self.scheduler_options)

    @property
    def scheduler_choice(self) -> schedulers.SchedulerChoice:
        """The scheduler as one object (class name and options; every display is formatted from it). Nothing is
        resolved here: ``spec`` resolved the name once when it parsed the file and ``plan`` merged the options."""
        return schedulers.SchedulerChoice(self.scheduler, self.scheduler_options)

    def pipeline_key(self) -> tuple:
        """Runs with equal pipeline keys can share one batch."""
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)

    def key_material(self) -> dict[str, Any]:
        """What of these settings a run key hashes: every setting that can change the image (``KEY_SETTINGS``
        always; one added since, only when away from its default, so adding a setting changes no key)."""
        out: dict[str, Any] = {}
        for name, f in self.__dataclass_fields__.items():
            value = getattr(self, name)
            if name in NOT_IN_KEY or (name not in KEY_SETTINGS and value == f.default):
                continue
            out[name] = dict(value) if name in ("scheduler_options", "call") else value
        out["guidance_scale"] = float(self.guidance_scale)
        if self.lora:
            from tracker.prompts import lora

            out["lora"] = lora.key_material(self.lora)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["scheduler_options"] = dict(self.scheduler_options)
        d["lora"] = [dict(a) for a in self.lora]
        d["call"] = call_mapping(self.call)
        d["control_image"], d["controlnet"] = list(self.control_image), list(self.controlnet)
        d["ip_adapter"] = dict(self.ip_adapter)
        if isinstance(self.controlnet_conditioning_scale, tuple):
            d["controlnet_conditioning_scale"] = list(self.controlnet_conditioning_scale)
        return d

    @property
    def task(self) -> str:
        """What the run's pipeline does with its inputs: "text2img", "img2img" (an ``image``) or "inpaint"
        (an ``image`` and a ``mask_image``); ControlNet, IP-Adapter and the refiner add to any of them."""
        return "inpaint" if self.image and self.mask_image else "img2img" if self.image else "text2img"

    def call_kwargs(self) -> dict[str, Any]:
        """The ``call`` arguments as a mapping (list values as lists)."""
        return call_mapping(self.call)


SETTING_NAMES = tuple(Settings.__dataclass_fields__)
# Settings whose runs column ``tracker.store.tables`` generates from the field: name -> (type name, *arguments).
SETTING_COLUMNS = {f.name: f.metadata["column"] for f in fields(Settings) if "column" in f.metadata}


def lora_settings(raw: Any) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """``Settings.lora`` from its JSON form (a list of adapter mappings, as recipes and the store keep it)."""
    return tuple(tuple(sorted(dict(a).items())) for a in raw or ())


def call_settings(raw: Any) -> tuple[tuple[str, Any], ...]:
    """``Settings.call`` from its JSON form (a mapping, as recipes and the store keep it)."""
    return tuple(sorted((str(k), _frozen(v)) for k, v in dict(raw or {}).items()))


# settings whose JSON form (store, recipe) is a list or mapping and whose Settings value is a tuple
_JSON_TUPLES = ("control_image", "controlnet", "controlnet_conditioning_scale", "ip_adapter")


def from_json(values: dict[str, Any]) -> dict[str, Any]:
    """Setting values read back from the store or a recipe (lists, mappings) as Settings holds them (tuples)."""
    out = dict(values)
    for name in _JSON_TUPLES:
        v = out.get(name)
        if isinstance(v, dict):
            out[name] = tuple(sorted(v.items()))
        elif isinstance(v, list):
            out[name] = tuple(v)
    return out


def call_mapping(call: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: _thawed(v) for k, v in call}


def _frozen(v: Any) -> Any:
    return tuple(_frozen(x) for x in v) if isinstance(v, (list, tuple)) else v


def _thawed(v: Any) -> Any:
    return [_thawed(x) for x in v] if isinstance(v, tuple) else v


# Names an experiment file may use for settings: the Settings fields plus ``size``.
SETTING_KEYS = tuple(n for n in SETTING_NAMES if n not in ("width", "height", "lora")) + ("size", "width", "height")


# ---------------------------------------------------------------------------------------------
# setting normalizers: (value, err) -> normalized value; ``err(message)`` raises a SpecError


def _bool(v: Any, err: Callable) -> bool:
    if isinstance(v, bool):
        return v
    err(f"must be true or false but is {v!r}")


def _pos_int(v: Any, err: Callable) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        err(f"must be a positive integer but is {v!r}")
    return v


def _guidance(v: Any, err: Callable) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        err(f"must be a finite number >= 0 but is {v!r}")
    return float(v)


def _text(v: Any, err: Callable) -> str:
    if not isinstance(v, str) or not v.strip():
        err(f"must be a non-empty string but is {v!r}")
    return v.strip()


def _model(v: Any, err: Callable) -> str:
    """A model or VAE: a name (built-in, folder, Hub id, or a single ``.safetensors`` file), or ``{file: X,
    config: FOLDER-OR-HUB-ID}`` for a single file with its diffusers config, kept as ``X?config=CONFIG``
    (tracker.experiment.single_file; the file itself is checked by the parser, which knows the file's folder)."""
    from tracker.experiment import single_file

    if isinstance(v, dict):
        unknown = [k for k in v if k not in ("file", "config")]
        if unknown or "file" not in v:
            err(f"must be a name, or a mapping with file (a .safetensors file) and optionally config (a diffusers "
                f"folder or Hub id of the same family) but is {v!r}")
        file = _text(v["file"], lambda m: err(f"file: {m}"))
        config = _text(v["config"], lambda m: err(f"config: {m}")) if v.get("config") is not None else None
        if single_file.CONFIG_MARK in file or (config and single_file.CONFIG_MARK in config):
            err(f"file and config may not contain {single_file.CONFIG_MARK!r}: {v!r}")
        if not file.lower().endswith(single_file.SUFFIXES):
            err(f"file: must be a single weights file (.safetensors; .ckpt/.pt/.pth/.bin with allow_pickle: true) "
                f"but is {file!r}")
        return single_file.canonical(file, config)
    return _text(v, err)


def _dtype(v: Any, err: Callable) -> str:
    if not isinstance(v, str) or v.lower() not in DTYPES:
        err(f"must be one of float32, float16, bfloat16 but is {v!r}")
    return DTYPES[v.lower()]


def _device(v: Any, err: Callable) -> str:
    if not isinstance(v, str) or not DEVICE_RE.match(v.lower()):
        err(f"must be auto, cpu, cuda, cuda:N or mps but is {v!r}")
    return v.lower()


def _batch(v: Any, err: Callable) -> int | str:
    if v == "auto":
        return "auto"
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        err(f"must be a positive integer or auto but is {v!r}")
    return v


def _scheduler(v: Any, err: Callable) -> schedulers.SchedulerChoice:
    """The one place a scheduler name is resolved: the class name and the options an A1111 alias implies
    ("DPM++ 2M Karras": use_karras_sigmas); the plan puts the user's ``scheduler_options`` over them."""
    try:
        return schedulers.SchedulerChoice.of(v)
    except SpecError as e:
        err(e.detail)


def _compile(v: Any, err: Callable) -> str:
    """false | true | {mode, fullgraph, dynamic} -> "off" | "mode=default,..." (canonical, sorted)."""
    if v is False or v is None or v == COMPILE_OFF:
        return COMPILE_OFF
    if v is True:
        v = {}
    if not isinstance(v, dict):
        err(f"must be true, false or a mapping with mode, fullgraph, dynamic but is {v!r}")
    for k, x in v.items():
        if k not in COMPILE_OPTIONS:
            err(f"unknown option {k!r}{suggest(k, list(COMPILE_OPTIONS))}; known: {', '.join(COMPILE_OPTIONS)}")
        if not isinstance(x, COMPILE_OPTIONS[k]) or (k == "mode" and x not in COMPILE_MODES):
            want = ", ".join(COMPILE_MODES) if k == "mode" else "true or false"
            err(f"{k} must be one of {want} but is {x!r}")
    options = {"mode": "default", **v}
    return ",".join(f"{k}={str(x).lower() if isinstance(x, bool) else x}" for k, x in sorted(options.items()))


def _attention(v: Any, err: Callable) -> str:
    """A backend name, lower case; whether diffusers knows it and it runs here is the engine's check."""
    name = v.strip().lower() if isinstance(v, str) else None
    if not name or not ATTENTION_RE.match(name):
        err(f"must be default or a diffusers attention backend name (native, flash, sage, flex, xformers, "
            f"_native_math, ...) but is {v!r}")
    return name


def compile_options(value: str) -> dict[str, Any]:
    """The keyword arguments of torch.compile for a canonical ``compile`` setting ({} when off)."""
    if value == COMPILE_OFF:
        return {}
    out: dict[str, Any] = {}
    for part in value.split(","):
        k, _, x = part.partition("=")
        out[k] = (x == "true") if COMPILE_OPTIONS.get(k) is bool else x
    return out


def _scheduler_options(v: Any, err: Callable) -> tuple[tuple[str, Any], ...]:
    if not isinstance(v, dict):
        err(f"must be a mapping of option -> value but is {v!r}")
    for k, x in v.items():
        if not isinstance(k, str) or not isinstance(x, (str, int, float, bool, type(None))):
            err(f"option {k!r} must map a name to a plain value but is {x!r}")
    return tuple(sorted(v.items()))


def _dim(v: Any, err: Callable) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 8:
        err(f"must be a positive multiple of 8 but is {v!r}")
    return v


def _size(v: Any, err: Callable) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        w = h = v
    else:
        m = SIZE_RE.match(v) if isinstance(v, str) else None
        if not m:
            err(f"must be WIDTHxHEIGHT (e.g. 512x512) but is {v!r}")
        w, h = int(m.group(1)), int(m.group(2))
    if w <= 0 or h <= 0 or w % 8 or h % 8:
        err(f"width and height must be positive multiples of 8 but are {w}x{h}")
    return w, h


def _prompt_syntax(v: Any, err: Callable) -> str:
    from tracker.prompts.weighting import SYNTAXES

    if not isinstance(v, str) or v.strip().lower() not in SYNTAXES:
        err(f"must be one of {', '.join(SYNTAXES)} but is {v!r}")
    return v.strip().lower()


CALL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plain(v: Any, depth: int = 0) -> bool:
    if v is None or isinstance(v, (str, bool, int)):
        return True
    if isinstance(v, float):
        return v == v and v not in (float("inf"), float("-inf"))
    return isinstance(v, (list, tuple)) and depth < 3 and len(v) <= 64 and all(_plain(x, depth + 1) for x in v)


def _call(v: Any, err: Callable) -> tuple[tuple[str, Any], ...]:
    """``call: {name: value}``: further keyword arguments of the pipeline call, plain values only (text, numbers,
    true/false, null, lists of them); each name is checked against the pipeline's ``__call__`` by the plan."""
    if not isinstance(v, dict):
        err(f"must be a mapping of pipeline argument -> value (e.g. {{max_sequence_length: 512}}) but is {v!r}")
    for k, x in v.items():
        if not isinstance(k, str) or not CALL_NAME_RE.match(k):
            err(f"{k!r} is not an argument name")
        if not _plain(x):
            err(f"{k}: must be text, a number, true/false, null or a list of them but is {x!r} (tensors, images "
                f"and mappings cannot be given here)")
    return call_settings(v)


# -- image-conditioned runs (docs/image-conditioned.md). An image field holds a sha256 here: the parser reads the
# file an experiment names and passes its hash (tracker.experiment.inputs); a recipe or the store holds the hash.

HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def _image_hash(v: Any, err: Callable) -> str:
    if v is None or v == "":
        return ""
    if not isinstance(v, str) or not HEX64_RE.match(v):
        err(f"must be an input image's sha256 (64 hex digits) but is {v!r}")
    return v


def _image_hashes(v: Any, err: Callable) -> tuple[str, ...]:
    items = v if isinstance(v, (list, tuple)) else [] if v in (None, "") else [v]
    return tuple(_image_hash(x, err) for x in items)


def _number(v: Any, err: Callable, low: float, high: float, open_low: bool, open_high: bool) -> float:
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if ok:
        ok = (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    if not ok:
        top = "inf" if high == math.inf else f"{high:g}"
        err(f"must be a number in {'(['[not open_low]}{low:g}, {top}{')]'[not open_high]} but is {v!r}")
    return float(v)


_strength = lambda v, err: _number(v, err, 0, 1, True, False)  # noqa: E731 - (0, 1]
_unit = lambda v, err: _number(v, err, 0, 1, False, False)  # noqa: E731 - [0, 1]
_open_unit = lambda v, err: None if v is None else _number(v, err, 0, 1, True, True)  # noqa: E731 - (0, 1) or null
_scale = lambda v, err: _number(v, err, 0, math.inf, False, True)  # noqa: E731 - [0, inf)


def _scales(v: Any, err: Callable) -> float | tuple[float, ...]:
    """One conditioning scale, or one per ControlNet (a list)."""
    if isinstance(v, (list, tuple)):
        if not v:
            err("is an empty list; give a number, or one per ControlNet")
        return tuple(_scale(x, err) for x in v)
    return _scale(v, err)


def _models(v: Any, err: Callable) -> tuple[str, ...]:
    """ControlNet models: a name (folder, Hub id, single file or {file, config}) or a list of them, in order."""
    items = v if isinstance(v, (list, tuple)) else [] if v in (None, "") else [v]
    return tuple(_model(x, err) for x in items)


IP_ADAPTER_KEYS = ("path", "weight_name", "image_encoder", "subfolder")


def _ip_adapter(v: Any, err: Callable) -> tuple[tuple[str, Any], ...]:
    """``{path: FOLDER-OR-HUB-ID, weight_name: FILE, image_encoder: FOLDER, subfolder: NAME}`` (diffusers'
    ``load_ip_adapter``); ``path`` and ``weight_name`` are required."""
    if v is None or v == {} or v == ():
        return ()
    if isinstance(v, (list, tuple)) and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
        v = dict(v)
    if not isinstance(v, dict) or "path" not in v or "weight_name" not in v or set(v) - set(IP_ADAPTER_KEYS):
        err(f"must be a mapping with path (a folder or Hub id), weight_name (the weights file in it) and optionally "
            f"image_encoder (a folder) and subfolder, but is {v!r}")
    return tuple(sorted((str(k), _text(x, lambda m, k=k: err(f"{k}: {m}"))) for k, x in v.items() if x is not None))


def _refiner(v: Any, err: Callable) -> str:
    return "" if v is None or v == "" else _model(v, err)


NORMALIZERS: dict[str, Callable[[Any, Callable], Any]] = {
    "model": _model, "vae": _model, "scheduler": _scheduler, "scheduler_options": _scheduler_options,
    "steps": _pos_int, "guidance_scale": _guidance, "width": _dim, "height": _dim, "size": _size,
    "dtype": _dtype, "device": _device, "generator_device": _device,
    "attention_slicing": _bool, "vae_slicing": _bool, "vae_tiling": _bool, "cpu_offload": _bool,
    "batch_size": _batch, "allow_pickle": _bool, "compile": _compile, "attention": _attention,
    "prompt_syntax": _prompt_syntax, "deterministic": _bool, "call": _call,
    "image": _image_hash, "mask_image": _image_hash, "control_image": _image_hashes, "ip_adapter_image": _image_hash,
    "strength": _strength, "controlnet_conditioning_scale": _scales, "control_guidance_start": _unit,
    "control_guidance_end": _unit, "ip_adapter_scale": _scale, "denoising_end": _open_unit,
    "denoising_start": _open_unit, "controlnet": _models, "ip_adapter": _ip_adapter, "refiner": _refiner,
}


def setting_label(name: str, value: Any) -> str:
    """How a setting value reads as an axis label."""
    if name == "size":
        return f"{value[0]}x{value[1]}"
    if name in ("scheduler_options", "call"):
        return ",".join(f"{k}={json.dumps(_thawed(v)) if isinstance(v, tuple) else v}" for k, v in value) or "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if name == "ip_adapter":
        return dict(value).get("path", "(none)")
    if isinstance(value, tuple):
        return "+".join(f"{x:g}" if isinstance(x, float) else str(x) for x in value) or "(none)"
    if name == "compile" and value == "mode=default":
        return "on"
    return str(value)


def apply_setting(settings: dict[str, Any], name: str, value: Any) -> None:
    """Put one normalized setting into a dict of Settings fields (``size`` sets width and height)."""
    if name == "size":
        settings["width"], settings["height"] = value
    else:
        settings[name] = value


def setting_fields(name: str) -> tuple[str, ...]:
    return ("width", "height") if name == "size" else (name,)


def suggest(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
