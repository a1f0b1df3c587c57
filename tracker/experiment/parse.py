"""The experiment file: YAML in, a frozen ``ExperimentSpec`` out. Pure: no torch, no diffusers.

Every field is validated here and an error names the file, the field (with its line) and the value.
``parse`` reads the file in numbered sections, one helper each; the pipeline settings, their
normalizers and ``Settings`` live in ``tracker.experiment.settings``; the seeds, zip groups and exclusions (which
points of the axes' product run) in ``tracker.experiment.product``; the dataclasses it builds in
``tracker.experiment.model``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

from tracker import limits
from tracker.errors import SpecError
from tracker.experiment import product as spec_product
from tracker.experiment.model import Axis, AxisValue, ExperimentSpec
from tracker.experiment.schedulers import SchedulerChoice
from tracker.experiment.inputs import CONDITIONING, IMAGE_FIELDS, InputImage
from tracker.experiment.settings import (NORMALIZERS, SETTING_KEYS, SETTING_NAMES, Settings, apply_setting, call_settings,
                                         from_json, setting_fields, setting_label, suggest)
from tracker.prompts import templating
from tracker.experiment.yamlfile import LinedYaml, load

NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
AXIS_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

TOP_LEVEL = ("name", "description", "prompt", "prompts", "negative_prompt", "axes", "seeds", "zip", "exclude", "grid",
             "variants", "wildcards", "lora", "metrics", "metric_options") + SETTING_KEYS
RESERVED_AXES = set(TOP_LEVEL) | {"seed"}


# ---------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, doc: LinedYaml, path: str, base_dir: Path | None = None):
        self.doc, self.path, self.base_dir = doc, path, base_dir
        self.allow_pickle = False  # the file's own allow_pickle (a single-file model may then be a pickle)
        self.inputs: dict[str, InputImage] = {}  # input images read, by sha256 (tracker.experiment.inputs)

    def err(self, field: str, message: str, *at: Any) -> None:
        parts = tuple(str(p) if not isinstance(p, int) or isinstance(p, bool) else p for p in at)
        raise SpecError(self.path, field, message, self.doc.line(*parts))

    def errf(self, field: str, *at: Any) -> Callable[[str], None]:
        return lambda message: self.err(field, message, *at)

    def setting(self, name: str, value: Any, field: str, *at: Any) -> Any:
        if name in IMAGE_FIELDS:
            value = self.image(name, value, field, *at)
        v = NORMALIZERS[name](value, self.errf(field, *at))
        if name in ("model", "vae"):
            self.single_file(name, v, field, *at)
        return v

    def image(self, name: str, value: Any, field: str, *at: Any) -> str | list[str]:
        """An input image's path (a list of them for several ControlNets) read once, checked, and replaced by its
        sha256; the bytes stay with the experiment until a sweep stores them in the workspace."""
        from tracker import limits
        from tracker.experiment import inputs

        if name == "control_image" and isinstance(value, list):
            return [self.image(name, v, f"{field}[{i}]", *at) for i, v in enumerate(value)]
        if not isinstance(value, str) or not value.strip():
            self.err(field, f"must be the path of an image file (relative to the experiment file) but is {value!r}",
                     *at)
        try:
            img = inputs.read(value.strip(), self.base_dir)
        except inputs.InputError as e:
            self.err(field, f"{value.strip()!r} {e}", *at)
        if img.sha256 not in self.inputs and len(self.inputs) >= limits.MAX_INPUT_IMAGES:
            self.err(field, f"{value!r}: more than {limits.MAX_INPUT_IMAGES} different input images in one experiment "
                            f"(tracker.limits.MAX_INPUT_IMAGES)", *at)
        self.inputs.setdefault(img.sha256, img)
        return img.sha256

    def single_file(self, name: str, value: str, field: str, *at: Any) -> None:
        """A single-file model or VAE is checked here: the file, its layout and its config (one line each)."""
        from tracker.experiment import single_file

        if not single_file.is_single_file(value):
            return
        check = single_file.check_checkpoint if name == "model" else single_file.check_vae_file
        try:
            check(value, self.base_dir, self.allow_pickle)
        except single_file.SingleFileError as e:
            self.err(field, f"{single_file.split(value)[0]!r} {e}", *at)


def _image_label(item: Any) -> str:
    """An image axis value's label: the path as written (several ControlNet images joined by +)."""
    return "+".join(map(_image_label, item)) if isinstance(item, list) else str(item).strip()


def _label(value: Any) -> str:
    text = str(value)
    return text if text.strip() else "(empty)"


def parse_file(path: str | Path, metric_names: Collection[str] | None = None) -> ExperimentSpec:
    """Read and parse an experiment file (see ``parse``); a SpecError names the file when it cannot be read."""
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
    return parse(text, str(path), default_name=p.stem, base_dir=p.resolve().parent, metric_names=metric_names)


def parse(text: str, path: str = "<experiment>", default_name: str | None = None,
          base_dir: Path | None = None, metric_names: Collection[str] | None = None) -> ExperimentSpec:
    """Parse an experiment file's text; a SpecError names the file, the field (with its line) and the value.

    ``metric_names``: the metrics a file may name (``tracker.metrics.available()``, passed in by whoever runs the
    experiment); None checks only the shape of ``metrics`` and ``metric_options`` (a stored file read again)."""
    doc = load(text, path)
    P = _Parser(doc, path, base_dir)
    data = _fields(P, doc.data)
    P.allow_pickle = data.get("allow_pickle") is True

    # 1. name and description
    name, description = _name(P, data, default_name)
    # 2. settings: a scalar sets a base value, a list makes an axis (lora: a mapping makes one)
    settings, scheduler, explicit, setting_axes = _settings(P, data, base_dir)
    # 3. prompts: a string is a template, a mapping label -> template is an axis, ``prompts:`` a prompt set
    templates, prompt_axes, label_axes = _prompts(P, data, base_dir)
    # 4. named axes (a setting is set in one place: an axis bundle or the file's own list)
    user_axes = _named_axes(P, data, setting_axes)
    for a in label_axes:
        if a.name in (u.name for u in user_axes):
            P.err(f"axes.{a.name}", f"axis name {a.name!r} is the prompt set's label axis; rename the axis", "axes", a.name)
    # 5. seeds
    seeds, seeds_from = spec_product.seeds(P, data.get("seeds", [0]) if "seeds" in data else [0])
    seed_axis = Axis("seed", "seed", tuple(AxisValue(str(s), value=s) for s in seeds))
    # 6. templates: every variable must be an axis; the sandbox is checked when they render
    var_axes = user_axes + setting_axes + [seed_axis]
    _check_templates(P, templates, prompt_axes, var_axes)
    # 7. Dynamic Prompts variants of the rendered templates become axes
    variants, variant_axes = _variants(P, data, templates, prompt_axes, var_axes, base_dir)
    axes = tuple(prompt_axes + label_axes + user_axes + variant_axes + setting_axes + [seed_axis])
    names = [a.name for a in axes]
    # 8. zip groups and exclusions
    zip_groups = spec_product.zip_groups(P, data.get("zip"), axes)
    exclude = spec_product.exclusions(P, data.get("exclude"), names)
    # 9. grid layout
    grid = _grid(P, data, names)
    # 10. metrics scored per image
    metrics, metric_options = _metrics(P, data, metric_names)

    lines = {k: doc.line(k) for k in data if doc.line(k)}
    return ExperimentSpec(
        name=name, path=path, source=text, prompt=templates.get("prompt"),
        negative_prompt=templates.get("negative_prompt"), axes=axes, zip_groups=zip_groups, exclude=exclude,
        settings=settings, scheduler=scheduler, explicit=explicit, grid=grid, seeds_from=seeds_from,
        description=description, variants=variants, lines=lines, base_dir=base_dir, metrics=metrics,
        metric_options=metric_options, inputs=dict(P.inputs),
    )


def _fields(P: _Parser, data: Any) -> dict:
    """The file is a mapping of known fields."""
    if data is None:
        P.err("", "is empty; an experiment needs at least a prompt")
    if not isinstance(data, dict):
        P.err("", f"must be a mapping of fields but is {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL:
            P.err(str(key), f"unknown field {str(key)!r}{suggest(key, list(TOP_LEVEL))}", key)
    return data


def _name(P: _Parser, data: dict, default_name: str | None) -> tuple[str, str]:
    """``name`` (a folder name; the file's stem by default) and ``description``."""
    name = data.get("name", default_name if default_name is not None else Path(P.path).stem)
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        P.err("name", f"must match [A-Za-z0-9._-]+ (and not be . or ..) but is {name!r}", "name")
    if len(name) > limits.MAX_NAME_LENGTH:
        P.err("name", f"is {len(name)} characters long; at most {limits.MAX_NAME_LENGTH} (it becomes a folder name): "
                      f"{name[:40]!r}...", "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        P.err("description", f"must be a string but is {description!r}", "description")
    return name, description


def _settings(P: _Parser, data: dict, base_dir: Path | None) -> tuple[Settings, SchedulerChoice, frozenset[str],
                                                                      list[Axis]]:
    """The base Settings, the base scheduler as resolved (its class name is the Settings' ``scheduler``), the
    settings the file set itself, and the setting axes (lists, and a lora mapping). A scheduler name is resolved
    here, once, into a ``SchedulerChoice``; an axis of schedulers keeps what the user typed as its labels."""
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
                lab = item.strip() if key == "scheduler" else _image_label(item) if key in IMAGE_FIELDS \
                    else setting_label(key, v)
                if lab in seen:
                    P.err(f"{key}[{i}]", f"lists {item!r} twice", key, i)
                seen.add(lab)
                values.append(AxisValue(lab, value=item if key == "scheduler" else v, settings=((key, v),)))
            setting_axes.append(Axis(key, "setting", tuple(values)))
        else:
            apply_setting(base, key, P.setting(key, raw, key, key))
    setting_axes += _lora(P, data, base, base_dir)
    scheduler = base.pop("scheduler", SchedulerChoice())
    return Settings(**base, scheduler=scheduler.class_name), scheduler, frozenset(explicit), setting_axes


def _prompts(P: _Parser, data: dict, base_dir: Path | None) -> tuple[dict[str, str | None], list[Axis], list[Axis]]:
    """``prompt`` / ``negative_prompt``: the fixed templates, and the prompt axes; ``prompts:`` (a prompt set,
    tracker.experiment.promptset) makes the prompt axis and its label axis ``category``."""
    prompt_axes: list[Axis] = []
    label_axes: list[Axis] = []
    if "prompts" in data:
        from tracker.experiment import promptset

        if "prompt" in data:
            P.err("prompts", "give either prompt or prompts (a prompt set), not both", "prompts")
        found = promptset.read(data["prompts"], base_dir, lambda f, m: P.err(f, m, "prompts"))
        prompt_axes, label_axes = found[:1], found[1:]
    elif "prompt" not in data:
        P.err("prompt", "is missing; an experiment needs a prompt template (or prompts: a prompt set file)")
    templates: dict[str, str | None] = {"prompt": None}
    for key in ("prompt", "negative_prompt")[1 if prompt_axes else 0:]:
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
    return templates, prompt_axes, label_axes


def _named_axes(P: _Parser, data: dict, setting_axes: list[Axis]) -> list[Axis]:
    """``axes:``: variable axes (label -> value) and bundles (label -> settings)."""
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
                        P.err(f"{fi}.{sk}", f"unknown setting {str(sk)!r}{suggest(sk, list(SETTING_KEYS))}", *at, sk)
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
    return user_axes


def _check_templates(P: _Parser, templates: dict[str, str | None], prompt_axes: list[Axis],
                     var_axes: list[Axis]) -> None:
    """Every template variable names an axis."""
    variables = [a.name for a in var_axes]
    for key in ("prompt", "negative_prompt"):
        if templates.get(key) is not None:
            templating.check(templates[key], variables, P.path, key, P.doc.line(key))
    for a in prompt_axes:
        for v in a.values:
            templating.check(v.template, variables, P.path, f"{a.name}.{v.label}", P.doc.line(a.name, v.label))


def _grid(P: _Parser, data: dict, names: list[str]) -> tuple[str, str] | None:
    """``grid: {rows, cols}``: axis names for the report's layout."""
    if "grid" not in data:
        return None
    g = data["grid"]
    if not isinstance(g, dict) or set(g) - {"rows", "cols"} or not g:
        P.err("grid", f"must be a mapping with rows and cols (axis names) but is {g!r}", "grid")
    for k, v in g.items():
        if v not in names:
            P.err(f"grid.{k}", f"unknown axis {v!r}; known axes: {', '.join(names)}", "grid", k)
    return (g.get("rows"), g.get("cols"))


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

    # a prompt set's text is literal: Dynamic Prompts only when the file asks for variants: itself
    opts = variants.options(data.get("variants", False if "prompts" in data else None), data.get("wildcards"), base_dir,
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


def _metrics(P: _Parser, data: Mapping[str, Any], known: Collection[str] | None
             ) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """``metrics: [clip_score, shapes]`` and ``metric_options: {name: {...}}``; ``known``: the names in
    tracker.metrics' registry (None: not checked here)."""
    def unknown(m: Any) -> bool:
        return not isinstance(m, str) or (known is not None and m not in known)

    raw = data.get("metrics", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        P.err("metrics", f"must be a list of metric names but is {raw!r}", "metrics")
    names: list[str] = []
    for i, m in enumerate(raw):
        if unknown(m):
            P.err(f"metrics[{i}]", f"unknown metric {m!r}{suggest(str(m), list(known or ()))}; "
                  f"known: {', '.join(sorted(known or ()))}", "metrics", i)
        if m in names:
            P.err(f"metrics[{i}]", f"metric {m!r} appears twice", "metrics", i)
        names.append(m)
    options = data.get("metric_options", {}) or {}
    if not isinstance(options, dict):
        P.err("metric_options", f"must be a mapping metric -> options but is {options!r}", "metric_options")
    for m, opts in options.items():
        if unknown(m):
            P.err(f"metric_options.{m}", f"unknown metric {m!r}{suggest(str(m), list(known or ()))}", "metric_options", m)
        if not isinstance(opts, dict):
            P.err(f"metric_options.{m}", f"must be a mapping of options but is {opts!r}", "metric_options", m)
    return tuple(names), {m: dict(o) for m, o in options.items()}



def with_base_run(exp: ExperimentSpec, seed: int, settings: Mapping[str, Any]) -> ExperimentSpec:
    """``seeds: {from: KEY}``: take that run's seed, and its settings where the file does not set them."""
    merged = from_json({k: v for k, v in settings.items() if k in SETTING_NAMES and k not in exp.explicit})
    defaults = Settings()  # a base run's text-to-image defaults are not the file's (strength without an image)
    merged = {k: v for k, v in merged.items() if k not in CONDITIONING or v != getattr(defaults, k)}
    if "scheduler_options" in merged and isinstance(merged["scheduler_options"], dict):
        merged["scheduler_options"] = tuple(sorted(merged["scheduler_options"].items()))
    if "call" in merged:
        merged["call"] = call_settings(merged["call"])
    new_settings = replace(exp.settings, **merged)
    # the stored run's scheduler is a class name and its options are all in scheduler_options: nothing to resolve
    scheduler = SchedulerChoice(merged["scheduler"]) if "scheduler" in merged else exp.scheduler
    axes = tuple(Axis("seed", "seed", (AxisValue(str(seed), value=seed),)) if a.name == "seed" else a for a in exp.axes)
    # the base run's values are the file's now: the model's family does not replace them
    return replace(exp, settings=new_settings, scheduler=scheduler, axes=axes, seeds_from=None,
                   explicit=exp.explicit | frozenset(merged))
