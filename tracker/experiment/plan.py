"""Expansion: an ``ExperimentSpec`` becomes an ordered, deterministic plan of runs. Pure: no torch.

Order: axes in the experiment's order (prompt axes, named axes, setting axes, seed), the last varying
fastest; a zip group advances as one axis at the place of its first member; ``exclude`` rules drop
combinations; combinations with equal run keys are one run (the first keeps its labels).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from tracker import limits
from tracker.experiment import model_refs as models
from tracker.prompts import templating
from tracker.errors import SpecError, TrackerError, UsageError
from tracker.experiment.settings import (PERF_SETTINGS, SETTING_NAMES, Settings, apply_setting, call_settings, from_json, lora_settings, setting_fields,
                              setting_label)
from tracker.experiment.model import Axis, AxisValue, ExperimentSpec
from tracker.experiment.product import MAX_SEED

DEFAULT_MAX_RUNS = 10_000
KEY_VERSION = 1
RECIPE_FORMAT = "prompt-tracker/1"  # the recipe's "format" (PNG chunk, MLflow's recipe.json, reproduce)
STATUSES = ("pending", "running", "done", "failed")  # a planned run's states in the run store


@dataclass(frozen=True)
class PlannedRun:
    key: str
    index: int
    experiment: str
    axes: tuple[tuple[str, str], ...]  # axis name -> label, in axis order (seed included)
    prompt: str
    negative_prompt: str
    prompt_template: str
    negative_template: str
    seed: int
    settings: Settings

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.axes)

    def to_dict(self) -> dict[str, Any]:
        s = self.settings.to_dict()
        return {
            "key": self.key, "index": self.index, "experiment": self.experiment,
            "prompt": self.prompt, "negative_prompt": self.negative_prompt,
            "prompt_template": self.prompt_template, "negative_template": self.negative_template,
            "axes": dict(self.axes), "seed": self.seed, **s,
        }

    def to_recipe(self, **result: Any) -> dict[str, Any]:
        """The run's recipe: the one shape the PNG chunk, MLflow's ``recipe.json``, the API and ``reproduce`` share.

        ``result`` adds what the engine knew when it made the image (left out where None): ``model_revision``,
        ``scheduler_config``, ``environment``, ``device_used`` (``device`` stays the run's *setting*, e.g.
        "auto", so ``from_recipe`` rebuilds the same Settings), ``pipeline``, timings and ``batch_size_used``.
        """
        from tracker.version import __version__

        recipe = {"format": RECIPE_FORMAT, **self.to_dict(), "tracker_version": __version__}
        recipe.update({k: v for k, v in result.items() if v is not None})
        return recipe

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], where: str = "recipe",
                    settings: Callable[[dict[str, Any]], Settings] | None = None) -> "PlannedRun":
        """The run a recipe (``to_recipe``) was made from; a one-line TrackerError naming ``where`` when it is
        malformed. ``settings`` builds the Settings from the recipe's setting values (``reproduce`` checks each
        like an experiment file); by default they are taken as they are."""
        try:
            seed, _, _ = recipe["seed"], recipe["key"], recipe["experiment"]  # required: KeyError -> malformed
            values = {"model": models.DEFAULT_MODEL, **{f: recipe[f] for f in SETTING_NAMES if f in recipe}}
            values["lora"] = lora_settings(values.get("lora"))
            if settings is None:
                values = from_json(values)
                values["call"] = call_settings(values.get("call"))
                values["scheduler_options"] = tuple(sorted(dict(values.get("scheduler_options") or {}).items()))
            built = settings(values) if settings is not None else Settings(**values)
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise TrackerError(f"{where}: seed: must be an integer between 0 and 2**63-1 but is {seed!r}")
            return cls(
                key=str(recipe["key"])[:64], index=int(recipe.get("index") or 0),
                experiment=str(recipe["experiment"])[:limits.MAX_NAME_LENGTH],
                axes=tuple((str(k), str(v)) for k, v in dict(recipe.get("axes") or {}).items()),
                prompt=checked_prompt(recipe["prompt"], where, "prompt"),
                negative_prompt=checked_prompt(recipe.get("negative_prompt"), where, "negative_prompt"),
                prompt_template=str(recipe.get("prompt_template") or recipe["prompt"]),
                negative_template=str(recipe.get("negative_template") or recipe.get("negative_prompt") or ""),
                seed=seed, settings=built,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise TrackerError(f"{where}: the prompt-tracker recipe is incomplete or malformed ({e!r})") from None


def checked_prompt(text: Any, where: str, field: str) -> str:
    """A prompt read from a recipe or a PNG: text, at most ``limits.MAX_PROMPT_CHARS`` characters."""
    text = "" if text is None else str(text)
    if len(text) > limits.MAX_PROMPT_CHARS:
        raise TrackerError(f"{where}: {field}: is {len(text)} characters long; at most {limits.MAX_PROMPT_CHARS}")
    return text


@dataclass(frozen=True)
class Plan:
    experiment: ExperimentSpec
    runs: tuple[PlannedRun, ...]
    combinations: int  # after zip and exclude, before merging equal keys

    @property
    def version(self) -> str:
        """The plan's version: a hash of its runs (keys and axis labels), so an edit that changes what is made
        (a prompt, a label, a seed) is a new version and one that does not (a description, comments) is not."""
        material = sorted([r.key, [list(a) for a in r.axes]] for r in self.runs)
        blob = json.dumps(material, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def labels_per_axis(self) -> dict[str, dict[str, int]]:
        """Runs per axis label, axis order kept."""
        out: dict[str, dict[str, int]] = {a.name: {lab: 0 for lab in a.labels} for a in self.experiment.axes}
        for r in self.runs:
            for name, label in r.axes:
                out[name][label] += 1
        return out


def run_key(settings: Settings, seed: int, prompt: str, negative_prompt: str, perf: dict[str, Any] | None = None) -> str:
    """A stable hash of everything that changes the image (plus performance settings varied on an axis)."""
    material = {"v": KEY_VERSION, **settings.key_material(), "seed": seed, "prompt": prompt,
                "negative_prompt": negative_prompt}
    if perf:
        material["perf"] = perf
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _groups(exp: ExperimentSpec) -> list[list[Axis]]:
    """Axes grouped for the product: a zip group is one entry at the place of its first member."""
    by_name = {a.name: a for a in exp.axes}
    group_of = {n: g for g in exp.zip_groups for n in g}
    out, placed = [], set()
    for a in exp.axes:
        if a.name in placed or a.kind == "label":  # a prompt set's category follows its prompt: not a factor
            continue
        names = group_of.get(a.name, (a.name,))
        out.append([by_name[n] for n in names])
        placed.update(names)
    return out


def size(exp: ExperimentSpec) -> int:
    """Combinations before ``exclude``: the product of axis sizes, zip groups counted once."""
    return math.prod(len(g[0].values) for g in _groups(exp))


def _combinations(exp: ExperimentSpec) -> Iterator[tuple[tuple[Axis, AxisValue], ...]]:
    groups = _groups(exp)
    labels = [a for a in exp.axes if a.kind == "label"]
    for choice in itertools.product(*(range(len(g[0].values)) for g in groups)):
        combo = tuple((a, a.values[i]) for g, i in zip(groups, choice) for a in g)
        if labels:
            from tracker.experiment.promptset import label_of

            prompt = next(v.label for a, v in combo if a.name == "prompt")
            combo += tuple((a, label_of(a, prompt)) for a in labels)
        yield combo


def _excluded(exp: ExperimentSpec, picked: dict[str, AxisValue], settings: dict[str, Any]) -> bool:
    for rule in exp.exclude:
        if all(_matches(name, want, picked, settings) for name, want in rule):
            return True
    return False


def _matches(name: str, want: Any, picked: dict[str, AxisValue], settings: dict[str, Any]) -> bool:
    if name in picked and picked[name].label == str(want if not isinstance(want, bool) else setting_label(name, want)):
        return True
    fields = setting_fields(name)
    if all(f in settings for f in fields):
        have = (settings["width"], settings["height"]) if name == "size" else settings[name]
        if name == "scheduler":  # SchedulerChoices, resolved when parsed: the same class is the same scheduler
            return have.class_name == want.class_name
        return have == want
    if name in picked:
        return picked[name].value == want
    return False


def expand(exp: ExperimentSpec, max_runs: int | None = DEFAULT_MAX_RUNS) -> Plan:
    """Expand an experiment into its plan. Raises TrackerError when the plan is larger than ``max_runs``."""
    if exp.seeds_from:
        raise TrackerError(f"{exp.path}: seeds: takes its seed from run {exp.seeds_from}; expand it with the store (tracker run)")
    total = size(exp)
    if max_runs is not None and total > max_runs:
        raise TrackerError(
            f"{exp.path}: the plan has {total} runs, more than the limit of {max_runs}; "
            f"narrow the axes or raise --max-runs")
    perf_axes = {f for a in exp.axes if a.kind in ("setting", "bundle") for v in a.values for k, _ in v.settings
                 for f in setting_fields(k) if f in PERF_SETTINGS}
    base = from_json(exp.settings.to_dict())
    base["scheduler"] = exp.scheduler  # a SchedulerChoice; an axis value's choice replaces it with its own options
    base["scheduler_options"] = dict(exp.settings.scheduler_options)  # the user's own
    base["call"] = dict(exp.settings.call)
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    combos = 0
    ignored: dict[str, bool] = {}  # an explicit setting -> whether it had an effect in some run
    for combo in _combinations(exp):
        picked = {a.name: v for a, v in combo}
        values = dict(base)
        variables: dict[str, Any] = {}
        explicit = set(exp.explicit)
        for a, v in combo:
            for k, x in v.settings:
                explicit.update(setting_fields(k))
                if k in ("scheduler_options", "call"):  # an axis's options or arguments over the file's own
                    values[k] = {**values[k], **dict(x)}
                else:
                    apply_setting(values, k, x)
            if a.kind not in ("prompt", "variant", "label"):
                variables[a.name] = v.value
        if _excluded(exp, picked, values):
            continue
        prompt_tpl = picked["prompt"].template if "prompt" in picked else exp.prompt
        neg_tpl = picked["negative_prompt"].template if "negative_prompt" in picked else (exp.negative_prompt or "")
        prompt = _render(exp, prompt_tpl, variables, "prompt", picked.get("prompt"))
        negative = _render(exp, neg_tpl, variables, "negative_prompt", picked.get("negative_prompt"))
        if exp.variants is not None:  # Jinja rendered first; now this combination's Dynamic Prompts variant
            prompt, negative = _variant(exp, picked, prompt, negative)
            if prompt is None or negative is None:
                continue  # this rendering of the template has no such variant
        for field, text, template in (("prompt", prompt_tpl, True), ("negative_prompt", neg_tpl, True),
                                      ("prompt", prompt, False), ("negative_prompt", negative, False)):
            _check_length(exp, field, text, picked, template)
        combos += 1
        settings = _settings(values, exp, explicit, negative, ignored)
        if settings.prompt_syntax == "a1111":
            _check_weights(exp, settings.prompt_syntax, prompt, negative)
        seed = picked["seed"].value
        perf = {f: values[f] for f in sorted(perf_axes)}
        key = run_key(settings, seed, prompt, negative, perf)
        if key in seen:
            continue
        seen.add(key)
        runs.append(PlannedRun(
            key=key, index=len(runs), experiment=exp.name,
            axes=tuple((a.name, v.label) for a, v in sorted(combo, key=lambda av: exp.axis_names.index(av[0].name))),
            prompt=prompt, negative_prompt=negative, prompt_template=prompt_tpl, negative_template=neg_tpl,
            seed=seed, settings=settings,
        ))
    for name, had_effect in ignored.items():
        if not had_effect:
            raise _family_error(exp, name, _ignored_everywhere(exp, name))
    return Plan(exp, tuple(runs), combos)


def _check_length(exp: ExperimentSpec, field: str, text: str, picked: dict[str, AxisValue], template: bool) -> None:
    """THE prompt limit where a prompt is made: a prompt (after Jinja and Dynamic Prompts, e.g. a long wildcard
    line) or its template longer than ``limits.MAX_PROMPT_CHARS`` is refused, so that no plan holds a prompt that
    ``checked_prompt`` (tracker reproduce, A1111 PNGs) would refuse to read back."""
    if len(text) <= limits.MAX_PROMPT_CHARS:
        return
    what = "its template" if template else "the prompt" + (" (after its variants and wildcards)"
                                                           if exp.variants is not None else "")
    label = ", ".join(f"{k}={v.label}" for k, v in picked.items() if k != "seed")
    raise SpecError(exp.path, field, f"{what} is {len(text)} characters long{f' ({label})' if label else ''}; "
                                     f"at most {limits.MAX_PROMPT_CHARS} (tracker.limits.MAX_PROMPT_CHARS)",
                    exp.lines.get(field))


def _check_weights(exp: ExperimentSpec, syntax: str, prompt: str, negative: str) -> None:
    """A prompt whose weights cannot be translated for compel is refused now, not by every run later."""
    from tracker.prompts import weighting

    for field, text in (("prompt", prompt), ("negative_prompt", negative)):
        try:
            weighting.check(text, syntax)
        except weighting.WeightError as e:
            raise SpecError(exp.path, field, f"prompt_syntax {syntax}: {e}", exp.lines.get(field)) from None


def _settings(values: dict[str, Any], exp: ExperimentSpec, explicit: set[str], negative: str,
              ignored: dict[str, bool]) -> Settings:
    """A run's Settings: its scheduler's class name, and the options its name implies under the user's own; the
    settings the file leaves unset from the model's family (steps, guidance, native size: ``tracker.experiment.families``),
    and the call arguments checked against the pipeline's ``__call__``."""
    from tracker.experiment import families

    choice = values["scheduler"]
    options = {**dict(choice.options), **values["scheduler_options"]}
    values = {**values, "scheduler": choice.class_name, "scheduler_options": tuple(sorted(options.items())),
              "lora": lora_settings(values["lora"]), "call": tuple(sorted(values["call"].items()))}
    facts = families.facts_for(values["model"], exp.base_dir)
    image = exp.inputs.get(values.get("image"))
    if image is not None and not values.get("width") and not values.get("height"):  # img2img: the image's size
        values["width"], values["height"] = image.width - image.width % 8, image.height - image.height % 8
    requested = ["guidance_scale"] * ("guidance_scale" in explicit)
    requested += ["call.true_cfg_scale"] * any(k == "true_cfg_scale" for k, _ in values["call"])
    try:
        facts.check_model()
        facts.check_call(values["call"])
        facts.check_inputs(values, explicit)
        missed = facts.effective(values, negative, explicit)
    except families.FamilyError as e:
        raise _family_error(exp, e.field, e.message) from None
    _check_inputs(exp, values)
    why = facts.family.check_reference(image.width, image.height) if image is not None else None
    if why:
        raise _family_error(exp, "image", f"{image.source!r} is {image.width}x{image.height} pixels; {why}")
    for name in requested:  # refused after the plan if it had no effect in any run
        ignored[name] = ignored.get(name, False) or name not in missed
    return Settings(**values)


def _check_inputs(exp: ExperimentSpec, values: dict[str, Any]) -> None:
    """One run's input images and their numbers, together: a mask of the image's size, a ControlNet image per
    ControlNet, control guidance that starts before it ends."""
    image, mask = exp.inputs.get(values.get("image")), exp.inputs.get(values.get("mask_image"))
    if image is not None and mask is not None and (image.width, image.height) != (mask.width, mask.height):
        raise _family_error(exp, "mask_image", f"{mask.source!r} is {mask.width}x{mask.height} pixels but the image "
                                               f"{image.source!r} is {image.width}x{image.height}; the mask must have "
                                               f"the image's size")
    if values.get("control_guidance_start", 0.0) >= values.get("control_guidance_end", 1.0):
        raise _family_error(exp, "control_guidance_start", f"{values['control_guidance_start']:g} must be less than "
                                                           f"control_guidance_end ({values['control_guidance_end']:g})")
    n_images, n_models = len(values.get("control_image") or ()), len(values.get("controlnet") or ())
    if n_images != n_models:
        raise _family_error(exp, "control_image", f"gives {n_images} ControlNet image(s) for {n_models} "
                                                  f"ControlNet model(s) (controlnet:); give one image per ControlNet")
    if values.get("ip_adapter_image") and not values.get("ip_adapter"):
        raise _family_error(exp, "ip_adapter_image", "is given without ip_adapter: (the adapter's folder and weights)")


def _ignored_everywhere(exp: ExperimentSpec, name: str) -> str:
    from tracker.experiment import families

    models_ = sorted({exp.settings.model} | {x for a in exp.axes for v in a.values for k, x in v.settings
                                             if k == "model"})
    titles = ", ".join(dict.fromkeys(families.facts_for(m, exp.base_dir).family.title for m in models_))
    if name == "guidance_scale":
        return (f"has no effect: {titles} applies classifier-free guidance (passed as true_cfg_scale) only with a "
                f"negative prompt, and no run has one; add a negative prompt (e.g. negative_prompt: \" \", as "
                f"Qwen-Image's model card does) or remove guidance_scale")
    return (f"has no effect: {titles} uses true CFG only with a negative prompt, and no run has one; add a "
            f"negative prompt or remove {name.split('.', 1)[1]}")


def _family_error(exp: ExperimentSpec, field: str, message: str) -> SpecError:
    """A family's refusal as one line naming the file, the field (where the file sets it) and its line."""
    top = field.split(".")[0]
    where, line = field, exp.lines.get(top)
    if top == "call" and "." in field:
        arg = field.split(".", 1)[1]
        if arg not in {k for k, _ in exp.settings.call}:
            for a in exp.axes:
                for v in a.values:
                    if any(k == "call" and arg in dict(x) for k, x in v.settings):
                        where = f"axes.{a.name}.{v.label}.{field}" if a.kind == "bundle" else f"call[{v.label}].{arg}"
                        line = exp.lines.get("axes") if a.kind == "bundle" else exp.lines.get("call")
                        break
                else:
                    continue
                break
    if top == "negative_prompt" and "negative_prompt" not in exp.lines and "negative_prompt" in exp.axis_names:
        line = None
    return SpecError(exp.path, where, message, line)


def _variant(exp: ExperimentSpec, picked: dict[str, AxisValue], prompt: str, negative: str) -> tuple[str | None, str | None]:
    from tracker.prompts import variants

    axis = exp.variants.axis
    return (variants.choose(exp.variants, picked[axis].label if axis in picked else None, prompt),
            variants.choose(exp.variants, picked[variants.NEGATIVE_AXIS].label
                            if variants.NEGATIVE_AXIS in picked else None, negative))


def _render(exp: ExperimentSpec, template: str, variables: dict[str, Any], field: str, value: AxisValue | None) -> str:
    fname = f"{field}.{value.label}" if value is not None else field
    line = exp.lines.get(field)
    return templating.render(template, variables, exp.path, fname, line)


def parse_where(items: Iterable[str], known: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """``--where axis=label`` options -> {axis: label}. ``known``: axis -> its labels.

    A malformed item, an unknown axis or an unknown label is a UsageError that lists what exists.
    """
    out: dict[str, str] = {}
    axes = ", ".join(known) or "(none)"
    for item in items:
        name, sep, label = item.partition("=")
        name, label = name.strip(), label.strip()
        if not sep or not name or not label:
            raise UsageError(f"--where {item!r}: expected AXIS=LABEL (e.g. seed=1); known axes: {axes}")
        if name not in known:
            raise UsageError(f"--where {item!r}: unknown axis {name!r}; known axes: {axes}")
        labels = [str(x) for x in known[name]]
        if label not in labels:
            raise UsageError(f"--where {item!r}: axis {name!r} has no label {label!r}; its labels: {', '.join(labels)}")
        out[name] = label
    return out
