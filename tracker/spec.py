"""The experiment file: YAML in, a frozen ``Experiment`` out. Pure: no torch, no diffusers.

Every field is validated here and an error names the file, the field (with its line) and the value.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from tracker import limits, models, schedulers, templating
from tracker.errors import SpecError
from tracker.yamlfile import LinedYaml, load

NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
AXIS_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_SEED = 2**63 - 1
DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32",
          "float16": "float16", "fp16": "float16", "half": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")

# Settings that change speed or memory but not the image; they join a run key only when varied on an axis.
PERF_SETTINGS = ("batch_size", "attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload", "device", "compile",
                 "deterministic", "attention")
COMPILE_OFF = "off"
ATTENTION_DEFAULT = "default"  # the attention backend the model was loaded with (tracker.attention)
ATTENTION_RE = re.compile(r"^[a-z0-9_]+$")
COMPILE_OPTIONS = {"mode": str, "fullgraph": bool, "dynamic": bool}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
    compile: str = COMPILE_OFF  # "off", or torch.compile options as "mode=default[,fullgraph=true][,dynamic=false]"
    prompt_syntax: str = "plain"  # plain | a1111 | compel (tracker.prompts.weighting)
    lora: tuple[tuple[tuple[str, Any], ...], ...] = ()  # adapters, each sorted (field, value) pairs (tracker.prompts.lora)
    deterministic: bool = False  # torch's deterministic algorithms around each pipeline call (tracker.determinism)
    attention: str = ATTENTION_DEFAULT  # "default", or a diffusers attention backend name (tracker.attention)

    def options(self) -> dict[str, Any]:
        return dict(self.scheduler_options)

    @property
    def scheduler_choice(self) -> schedulers.SchedulerChoice:
        """The scheduler as one object (class name and options; every display is formatted from it)."""
        return schedulers.SchedulerChoice.of(self.scheduler, self.scheduler_options)

    def pipeline_key(self) -> tuple:
        """Runs with equal pipeline keys can share one batch."""
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["scheduler_options"] = dict(self.scheduler_options)
        d["lora"] = [dict(a) for a in self.lora]
        return d


SETTING_NAMES = tuple(Settings.__dataclass_fields__)


def lora_settings(raw: Any) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """``Settings.lora`` from its JSON form (a list of adapter mappings, as recipes and the store keep it)."""
    return tuple(tuple(sorted(dict(a).items())) for a in raw or ())
# Names an experiment file may use for settings: the Settings fields plus ``size``.
SETTING_KEYS = tuple(n for n in SETTING_NAMES if n not in ("width", "height", "lora")) + ("size", "width", "height")
TOP_LEVEL = ("name", "description", "prompt", "negative_prompt", "axes", "seeds", "zip", "exclude", "grid",
             "variants", "wildcards", "lora", "metrics", "metric_options") + SETTING_KEYS
RESERVED_AXES = set(TOP_LEVEL) | {"seed"}


@dataclass(frozen=True)
class AxisValue:
    label: str
    value: Any = None  # template variable value (str/number) for "var" axes; the setting value for "setting" axes
    settings: tuple[tuple[str, Any], ...] = ()  # for bundle and setting axes: what this value sets
    template: str | None = None  # for prompt / negative_prompt axes


@dataclass(frozen=True)
class Axis:
    name: str
    kind: str  # "var" | "bundle" | "setting" | "prompt" | "seed"
    values: tuple[AxisValue, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(v.label for v in self.values)


@dataclass(frozen=True)
class Experiment:
    name: str
    path: str | None
    source: str
    prompt: str | None  # the template, when prompt is not an axis
    negative_prompt: str | None
    axes: tuple[Axis, ...]  # product order: the last varies fastest
    zip_groups: tuple[tuple[str, ...], ...]
    exclude: tuple[tuple[tuple[str, Any], ...], ...]
    settings: Settings  # base values; axes override them
    explicit: frozenset[str]  # settings the file set itself (``seeds: {from: KEY}`` keeps the others)
    grid: tuple[str, str] | None
    seeds_from: str | None
    description: str = ""
    variants: Any = None  # tracker.prompts.variants.VariantOptions, or None: no Dynamic Prompts expansion
    metrics: tuple[str, ...] = ()  # per-image metrics scored after each image is written (tracker.metrics)
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)
    base_dir: Path | None = field(default=None, compare=False, hash=False)  # relative model folders resolve here

    def axis(self, name: str) -> Axis | None:
        return next((a for a in self.axes if a.name == name), None)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)


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
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
        err(f"must be a number >= 0 but is {v!r}")
    return float(v)


def _text(v: Any, err: Callable) -> str:
    if not isinstance(v, str) or not v.strip():
        err(f"must be a non-empty string but is {v!r}")
    return v.strip()


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


def _scheduler(v: Any, err: Callable) -> str:
    try:
        cls, _ = schedulers.resolve(v)
    except SpecError as e:
        err(e.detail)
    return v if cls == schedulers.DEFAULT else v.strip()


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
            err(f"unknown option {k!r}{_suggest(k, list(COMPILE_OPTIONS))}; known: {', '.join(COMPILE_OPTIONS)}")
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


NORMALIZERS: dict[str, Callable[[Any, Callable], Any]] = {
    "model": _text, "vae": _text, "scheduler": _scheduler, "scheduler_options": _scheduler_options,
    "steps": _pos_int, "guidance_scale": _guidance, "width": _dim, "height": _dim, "size": _size,
    "dtype": _dtype, "device": _device, "generator_device": _device,
    "attention_slicing": _bool, "vae_slicing": _bool, "vae_tiling": _bool, "cpu_offload": _bool,
    "batch_size": _batch, "allow_pickle": _bool, "compile": _compile, "attention": _attention,
    "prompt_syntax": _prompt_syntax, "deterministic": _bool,
}


def setting_label(name: str, value: Any) -> str:
    """How a setting value reads as an axis label."""
    if name == "size":
        return f"{value[0]}x{value[1]}"
    if name == "scheduler_options":
        return ",".join(f"{k}={v}" for k, v in value) or "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
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


# ---------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, doc: LinedYaml, path: str):
        self.doc, self.path = doc, path

    def err(self, field: str, message: str, *at: Any) -> None:
        parts = tuple(str(p) if not isinstance(p, int) or isinstance(p, bool) else p for p in at)
        raise SpecError(self.path, field, message, self.doc.line(*parts))

    def errf(self, field: str, *at: Any) -> Callable[[str], None]:
        return lambda message: self.err(field, message, *at)

    def setting(self, name: str, value: Any, field: str, *at: Any) -> Any:
        return NORMALIZERS[name](value, self.errf(field, *at))


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _label(value: Any) -> str:
    text = str(value)
    return text if text.strip() else "(empty)"


def parse_file(path: str | Path) -> Experiment:
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size > limits.YAML_MAX_BYTES:
            raise SpecError(str(path), None, f"is {p.stat().st_size} bytes; an experiment file may hold at most "
                                             f"{limits.YAML_MAX_BYTES}")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), None, "no such file") from None
    except IsADirectoryError:
        raise SpecError(str(path), None, "is a folder, not an experiment file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), None, f"cannot be read: {e}") from None
    return parse(text, str(path), default_name=p.stem, base_dir=p.resolve().parent)


def parse(text: str, path: str = "<experiment>", default_name: str | None = None,
          base_dir: Path | None = None) -> Experiment:
    doc = load(text, path)
    P = _Parser(doc, path)
    data = doc.data
    if data is None:
        P.err("", "is empty; an experiment needs at least a prompt")
    if not isinstance(data, dict):
        P.err("", f"must be a mapping of fields but is {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL:
            P.err(str(key), f"unknown field {str(key)!r}{_suggest(key, list(TOP_LEVEL))}", key)

    # 1. name
    name = data.get("name", default_name if default_name is not None else Path(path).stem)
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        P.err("name", f"must match [A-Za-z0-9._-]+ (and not be . or ..) but is {name!r}", "name")
    if len(name) > limits.MAX_NAME_LENGTH:
        P.err("name", f"is {len(name)} characters long; at most {limits.MAX_NAME_LENGTH} (it becomes a folder name): "
                      f"{name[:40]!r}...", "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        P.err("description", f"must be a string but is {description!r}", "description")

    # 2. settings: a scalar sets a base value, a list makes an axis
    base: dict[str, Any] = {}
    explicit: set[str] = set()
    setting_axes: list[Axis] = []
    if "size" in data and ("width" in data or "height" in data):
        P.err("size", "give either size or width/height, not both", "size")
    for key in SETTING_KEYS:
        if key not in data:
            continue
        raw = data[key]
        explicit.update(setting_fields(key))
        if isinstance(raw, list):
            if not raw:
                P.err(key, "is an empty list; give at least one value", key)
            values, seen = [], set()
            for i, item in enumerate(raw):
                v = P.setting(key, item, f"{key}[{i}]", key, i)
                lab = setting_label(key, v)
                if lab in seen:
                    P.err(f"{key}[{i}]", f"lists {item!r} twice", key, i)
                seen.add(lab)
                values.append(AxisValue(lab, value=item if key == "scheduler" else v, settings=((key, v),)))
            setting_axes.append(Axis(key, "setting", tuple(values)))
        else:
            apply_setting(base, key, P.setting(key, raw, key, key))
    setting_axes += _lora(P, data, base, base_dir)
    settings = Settings(**base)

    # 3. prompts: a string is a template, a mapping label -> template is an axis
    if "prompt" not in data:
        P.err("prompt", "is missing; an experiment needs a prompt template")
    prompt_axes: list[Axis] = []
    templates: dict[str, str | None] = {}
    for key in ("prompt", "negative_prompt"):
        raw = data.get(key)
        if raw is None:
            if key == "prompt":
                P.err(key, "must be a string template", key)
            templates[key] = None
        elif isinstance(raw, str):
            templates[key] = raw
        elif isinstance(raw, dict):
            if not raw:
                P.err(key, "is an empty mapping; give at least one template", key)
            vals = []
            for lab, tpl in raw.items():
                if not isinstance(tpl, str):
                    P.err(f"{key}.{lab}", f"must be a string template but is {tpl!r}", key, lab)
                vals.append(AxisValue(str(lab), value=tpl, template=tpl))
            prompt_axes.append(Axis(key, "prompt", tuple(vals)))
            templates[key] = None
        else:
            P.err(key, f"must be a string template or a mapping label -> template but is {raw!r}", key)

    # 4. named axes
    user_axes: list[Axis] = []
    axes_raw = data.get("axes", {}) or {}
    if not isinstance(axes_raw, dict):
        P.err("axes", f"must be a mapping of axis name -> values but is {axes_raw!r}", "axes")
    bundle_sets: dict[str, str] = {}
    for aname, raw in axes_raw.items():
        f = f"axes.{aname}"
        if not isinstance(aname, str) or not AXIS_NAME_RE.match(aname):
            P.err(f, f"axis name must be an identifier ([A-Za-z_][A-Za-z0-9_]*) but is {aname!r}", "axes", aname)
        if aname in RESERVED_AXES:
            P.err(f, f"axis name {aname!r} collides with the setting or field of that name; rename the axis", "axes", aname)
        if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            raw = [raw]
        if not isinstance(raw, (list, dict)):
            P.err(f, f"must be a list of values or a mapping label -> value but is {raw!r}", "axes", aname)
        if not raw:
            P.err(f, "is empty; an axis needs at least one value", "axes", aname)
        items = list(raw.items()) if isinstance(raw, dict) else [(None, v) for v in raw]
        vals, seen, kinds = [], set(), set()
        for i, (lab, v) in enumerate(items):
            at = ("axes", aname, lab if lab is not None else i)
            fi = f"{f}.{lab}" if lab is not None else f"{f}[{i}]"
            if isinstance(v, dict):
                if lab is None:
                    P.err(fi, "a bundle of settings needs a label: write the axis as a mapping label -> settings", *at)
                if not v:
                    P.err(fi, "is an empty bundle of settings", *at)
                sets = []
                for sk, sv in v.items():
                    if sk not in SETTING_KEYS:
                        P.err(f"{fi}.{sk}", f"unknown setting {str(sk)!r}{_suggest(sk, list(SETTING_KEYS))}", *at, sk)
                    for fld in setting_fields(sk):
                        owner = bundle_sets.setdefault(fld, aname)
                        if owner != aname:
                            P.err(f"{fi}.{sk}", f"setting {sk!r} is already set by axis {owner!r}", *at, sk)
                    sets.append((sk, P.setting(sk, sv, f"{fi}.{sk}", *at, sk)))
                kinds.add("bundle")
                vals.append(AxisValue(str(lab), value=str(lab), settings=tuple(sets)))
            elif isinstance(v, (str, int, float, bool)) or v is None:
                v = "" if v is None else v
                kinds.add("var")
                vals.append(AxisValue(str(lab) if lab is not None else _label(v), value=v))
            else:
                P.err(fi, f"must be a text or number value, or a mapping of settings, but is {v!r}", *at)
            if vals[-1].label in seen:
                P.err(fi, f"label {vals[-1].label!r} appears twice", *at)
            seen.add(vals[-1].label)
        user_axes.append(Axis(aname, "bundle" if "bundle" in kinds else "var", tuple(vals)))
    for sa in setting_axes:
        for fld in setting_fields(sa.name):
            if fld in bundle_sets:
                P.err(sa.name, f"is a list here and also set by axis {bundle_sets[fld]!r}; set it in one place", sa.name)

    # 5. seeds
    seeds, seeds_from = _seeds(P, data.get("seeds", [0]) if "seeds" in data else [0])
    seed_axis = Axis("seed", "seed", tuple(AxisValue(str(s), value=s) for s in seeds))

    # 6. templates: every variable must be an axis; the sandbox is checked when they render
    var_axes = user_axes + setting_axes + [seed_axis]
    variables = [a.name for a in var_axes]
    for key in ("prompt", "negative_prompt"):
        if templates.get(key) is not None:
            templating.check(templates[key], variables, path, key, doc.line(key))
    for a in prompt_axes:
        for v in a.values:
            templating.check(v.template, variables, path, f"{a.name}.{v.label}", doc.line(a.name, v.label))

    # 7. Dynamic Prompts variants of the rendered templates become axes
    variants, variant_axes = _variants(P, data, templates, prompt_axes, var_axes, base_dir)

    axes = tuple(prompt_axes + user_axes + variant_axes + setting_axes + [seed_axis])
    names = [a.name for a in axes]

    # 8. zip groups and exclusions
    zip_groups = _zip(P, data.get("zip"), axes)
    exclude = _exclude(P, data.get("exclude"), names)

    # 9. grid layout
    grid = None
    if "grid" in data:
        g = data["grid"]
        if not isinstance(g, dict) or set(g) - {"rows", "cols"} or not g:
            P.err("grid", f"must be a mapping with rows and cols (axis names) but is {g!r}", "grid")
        for k, v in g.items():
            if v not in names:
                P.err(f"grid.{k}", f"unknown axis {v!r}; known axes: {', '.join(names)}", "grid", k)
        grid = (g.get("rows"), g.get("cols"))

    # 9. metrics scored per image
    metrics, metric_options = _metrics(P, data)

    lines = {k: doc.line(k) for k in data if doc.line(k)}
    return Experiment(
        name=name, path=path, source=text, prompt=templates.get("prompt"),
        negative_prompt=templates.get("negative_prompt"), axes=axes, zip_groups=zip_groups, exclude=exclude,
        settings=settings, explicit=frozenset(explicit), grid=grid, seeds_from=seeds_from,
        description=description, variants=variants, lines=lines, base_dir=base_dir, metrics=metrics,
        metric_options=metric_options,
    )


def _lora(P: _Parser, data: dict, base: dict[str, Any], base_dir: Path | None) -> list[Axis]:
    """``lora:``: a list of adapters sets them for every run; a mapping label -> adapters is the axis ``lora``."""
    if "lora" not in data:
        return []
    from tracker.prompts import lora

    parsed = lora.parse(data["lora"], base_dir, bool(base.get("allow_pickle")), lambda f, m: P.err(f, m, "lora"))
    if isinstance(parsed, tuple):
        base["lora"] = parsed
        return []
    return [Axis("lora", "setting", tuple(AxisValue(label, value=label, settings=(("lora", adapters),))
                                          for label, adapters in parsed))]


def _variants(P: _Parser, data: dict, templates: dict[str, str | None], prompt_axes: list[Axis],
              var_axes: list[Axis], base_dir: Path | None) -> tuple[Any, list[Axis]]:
    """``variants:`` / ``wildcards:`` and the variant axes of the prompt templates (tracker.prompts.variants)."""
    from tracker.prompts import variants

    opts = variants.options(data.get("variants"), data.get("wildcards"), base_dir,
                            lambda f, m: P.err(f, m, *f.split(".")[:1]))
    found = [variants.Template(k, k, P.doc.line(k), t) for k, t in templates.items() if t is not None]
    found += [variants.Template(a.name, f"{a.name}.{v.label}", P.doc.line(a.name, v.label), v.template)
              for a in prompt_axes for v in a.values]
    axes = variants.axes_for(opts, found, var_axes, P.path, lambda f, m, line: _raise(P.path, f, m, line))
    for a in axes:
        if a.name in RESERVED_AXES:
            P.err("variants.axis", f"axis name {a.name!r} collides with the setting or field of that name", "variants")
        if any(u.name == a.name for u in var_axes):
            P.err(f"axes.{a.name}", f"axis name {a.name!r} is taken by the variants of the prompt; rename the axis "
                  f"or name the variants axis with variants: {{axis: NAME}}", "axes", a.name)
    return (opts if axes else None), axes


def _raise(path: str, field: str, message: str, line: int | None) -> None:
    raise SpecError(path, field, message, line)


def _metrics(P: _Parser, data: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """``metrics: [clip_score, shapes]`` (names in tracker.metrics' registry) and ``metric_options: {name: {...}}``."""
    from tracker.metrics import available

    known = available()
    raw = data.get("metrics", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        P.err("metrics", f"must be a list of metric names but is {raw!r}", "metrics")
    names: list[str] = []
    for i, m in enumerate(raw):
        if not isinstance(m, str) or m not in known:
            P.err(f"metrics[{i}]", f"unknown metric {m!r}{_suggest(str(m), list(known))}; known: {', '.join(sorted(known))}",
                  "metrics", i)
        if m in names:
            P.err(f"metrics[{i}]", f"metric {m!r} appears twice", "metrics", i)
        names.append(m)
    options = data.get("metric_options", {}) or {}
    if not isinstance(options, dict):
        P.err("metric_options", f"must be a mapping metric -> options but is {options!r}", "metric_options")
    for m, opts in options.items():
        if m not in known:
            P.err(f"metric_options.{m}", f"unknown metric {m!r}{_suggest(str(m), list(known))}", "metric_options", m)
        if not isinstance(opts, dict):
            P.err(f"metric_options.{m}", f"must be a mapping of options but is {opts!r}", "metric_options", m)
    return tuple(names), {m: dict(o) for m, o in options.items()}


def _seed(P: _Parser, v: Any, field: str, *at: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        P.err(field, f"must be an integer but is {v!r}", *at)
    if not 0 <= v <= MAX_SEED:
        P.err(field, f"must be between 0 and 2**63-1 but is {v}", *at)
    return v


def _seeds(P: _Parser, raw: Any) -> tuple[list[int], str | None]:
    if isinstance(raw, dict):
        if set(raw) == {"from"}:
            if isinstance(raw["from"], int) and not isinstance(raw["from"], bool):
                raw = {"from": str(raw["from"])}  # an all-digit key prefix that YAML read as a number
            if not isinstance(raw["from"], str) or not raw["from"].strip():
                P.err("seeds.from", f"must be a run key but is {raw['from']!r}", "seeds", "from")
            return [0], raw["from"].strip()
        if set(raw) - {"start", "count"} or "count" not in raw:
            P.err("seeds", f"must be a list, a range 'A-B', {{start, count}} or {{from: KEY}} but is {raw!r}", "seeds")
        start = _seed(P, raw.get("start", 0), "seeds.start", "seeds", "start")
        count = raw["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            P.err("seeds.count", f"must be a positive integer but is {count!r}", "seeds", "count")
        if count > limits.MAX_SEEDS:
            P.err("seeds.count", f"asks for {count} seeds; at most {limits.MAX_SEEDS}", "seeds", "count")
        _seed(P, start + count - 1, "seeds", "seeds")
        return list(range(start, start + count)), None
    if isinstance(raw, str):
        m = re.match(r"^\s*(\d+)\s*-\s*(\d+)\s*$", raw)
        if not m:
            P.err("seeds", f"must be a list, a range 'A-B', {{start, count}} or {{from: KEY}} but is {raw!r}", "seeds")
        a, b = int(m.group(1)), int(m.group(2))
        _seed(P, a, "seeds", "seeds")
        _seed(P, b, "seeds", "seeds")
        if b < a:
            P.err("seeds", f"range {raw!r} ends before it starts", "seeds")
        if b - a >= limits.MAX_SEEDS:
            P.err("seeds", f"range {raw!r} holds {b - a + 1} seeds; at most {limits.MAX_SEEDS}", "seeds")
        return list(range(a, b + 1)), None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        P.err("seeds", f"must be a non-empty list, a range 'A-B', {{start, count}} or {{from: KEY}} but is {raw!r}", "seeds")
    out, seen = [], set()
    for i, v in enumerate(raw):
        s = _seed(P, v, f"seeds[{i}]", "seeds", i)
        if s in seen:
            P.err(f"seeds[{i}]", f"seed {s} is listed twice", "seeds", i)
        seen.add(s)
        out.append(s)
    return out, None


def _zip(P: _Parser, raw: Any, axes: tuple[Axis, ...]) -> tuple[tuple[str, ...], ...]:
    if raw is None:
        return ()
    by_name = {a.name: a for a in axes}
    if not isinstance(raw, list) or not all(isinstance(g, list) for g in raw):
        P.err("zip", f"must be a list of lists of axis names but is {raw!r}", "zip")
    groups, used = [], set()
    for i, g in enumerate(raw):
        f = f"zip[{i}]"
        if len(g) < 2:
            P.err(f, f"a zip group pairs two or more axes but has {len(g)}", "zip", i)
        for n in g:
            if n not in by_name:
                P.err(f, f"unknown axis {n!r}; known axes: {', '.join(by_name)}", "zip", i)
            if n in used:
                P.err(f, f"axis {n!r} is in more than one zip group", "zip", i)
            used.add(n)
        sizes = {n: len(by_name[n].values) for n in g}
        if len(set(sizes.values())) > 1:
            desc = ", ".join(f"{n} has {k}" for n, k in sizes.items())
            P.err(f, f"zipped axes must have equal lengths: {desc}", "zip", i)
        groups.append(tuple(g))
    return tuple(groups)


def _exclude(P: _Parser, raw: Any, names: list[str]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    if raw is None:
        return ()
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        P.err("exclude", f"must be a list of mappings axis -> value but is {raw!r}", "exclude")
    out = []
    known = sorted(set(names) | set(SETTING_KEYS))
    for i, rule in enumerate(raw):
        f = f"exclude[{i}]"
        if not isinstance(rule, dict) or not rule:
            P.err(f, f"must be a mapping axis -> value but is {rule!r}", "exclude", i)
        items = []
        for k, v in rule.items():
            if k not in names and k not in SETTING_KEYS:
                P.err(f"{f}.{k}", f"unknown axis or setting {str(k)!r}{_suggest(k, known)}; known: {', '.join(names)}", "exclude", i)
            if k in SETTING_KEYS:
                v = P.setting(k, v, f"{f}.{k}", "exclude", i)
            items.append((k, v))
        out.append(tuple(items))
    return tuple(out)


def with_base_run(exp: Experiment, seed: int, settings: Mapping[str, Any]) -> Experiment:
    """``seeds: {from: KEY}``: take that run's seed, and its settings where the file does not set them."""
    merged = {k: v for k, v in settings.items() if k in SETTING_NAMES and k not in exp.explicit}
    if "scheduler_options" in merged and isinstance(merged["scheduler_options"], dict):
        merged["scheduler_options"] = tuple(sorted(merged["scheduler_options"].items()))
    new_settings = replace(exp.settings, **merged)
    axes = tuple(Axis("seed", "seed", (AxisValue(str(seed), value=seed),)) if a.name == "seed" else a for a in exp.axes)
    return replace(exp, settings=new_settings, axes=axes, seeds_from=None)
