"""An AUTOMATIC1111 ``parameters`` chunk (from the tracker or another tool) mapped onto a ``PlannedRun``, as far
as it describes a pipeline the tracker can run, with one note per item it cannot map.

Pure: no torch. The settings it reads are checked like a recipe's (``tracker.reproduce.trust.checked_settings``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tracker import limits
from tracker.images import pngmeta
from tracker.experiment import schedulers
from tracker.errors import SpecError, TrackerError
from tracker.experiment.plan import PlannedRun, checked_prompt, run_key
from tracker.prompts import lora, weighting
from tracker.experiment.settings import SIZE_RE
from tracker.reproduce.trust import Trust, checked_settings

FOREIGN_EXPERIMENT = "reproduce"

# A1111 keys that name no pipeline setting and need no note.
INFORMATIONAL = {"Model hash", "VAE hash", "Version", "Tracker key", "Tracker experiment", "Lora hashes", "Tracker inputs"}
# A1111 settings at the value that means "what diffusers does anyway".
NEUTRAL = {"Clip skip": "1", "Schedule type": "Automatic", "Denoising strength": "0", "Eta": "0"}
# A1111 extra networks in a prompt; <lora:...> maps to a file of a loras: folder (tracker.prompts.lora)
A1111_NETWORK = re.compile(r"<(lyco|hypernet):[^>]*>", re.I)


def run_from_a1111(params: pngmeta.A1111Params, where: str = "parameters", model: str | None = None,
                   base_dir: Path | None = None, trust: Trust | None = None,
                   model_by_hash: Callable[[str], str | None] | None = None) -> tuple[PlannedRun, list[str]]:
    """Map an A1111 ``parameters`` chunk onto a PlannedRun; also return one note per item not mapped.

    ``model_by_hash(hash)``: a single-file model whose sha256 the PNG's ``Model hash`` names (the run store's, see
    ``models_by_hash``), used when the command line names no model and the PNG's ``Model`` is not that file here."""
    from dataclasses import replace

    trust = trust or Trust()
    if model:
        trust = replace(trust, model=model)
    s = dict(params.settings)
    notes: list[str] = []
    values: dict[str, Any] = {}

    def bad(key: str, message: str) -> TrackerError:
        return TrackerError(f"{where}: parameters {key}: {s.get(key)!r} {message}")

    def number(key: str, cast: Callable, check: Callable[[Any], bool], message: str):
        try:
            v = cast(s[key])
        except (ValueError, OverflowError):
            raise bad(key, message) from None
        if not check(v):
            raise bad(key, message)
        return v

    for key in ("Steps", "Seed", "Size"):
        if key not in s:
            raise TrackerError(f"{where}: the parameters chunk gives no {key}; cannot rebuild the run")
    values["steps"] = number("Steps", int, lambda v: v >= 1, "must be a positive integer")
    seed = number("Seed", int, lambda v: 0 <= v < 2**63, "must be an integer seed >= 0")
    m = SIZE_RE.match(s["Size"])
    if not m or len(m.group(1)) > 9 or len(m.group(2)) > 9:
        raise bad("Size", "must be WIDTHxHEIGHT in pixels")
    values["width"], values["height"] = int(m.group(1)), int(m.group(2))
    if "CFG scale" in s:
        values["guidance_scale"] = number("CFG scale", float, lambda v: 0 <= v < 1e6, "must be a number >= 0")

    if trust.model and s.get("Model") and s["Model"] != trust.model:
        notes.append(f"Model: {s['Model']} (replaced by --model {trust.model})")
    values["model"] = s.get("Model")
    if not trust.model and s.get("Model hash") and model_by_hash is not None \
            and not _names_the_file(s.get("Model"), s["Model hash"], base_dir):
        found = model_by_hash(s["Model hash"])
        if found:
            values["model"] = found
            notes.append(f"Model: {s.get('Model') or '(none)'} (the file with Model hash {s['Model hash']} is "
                         f"{found}, found in the run store)")
    if s.get("VAE"):
        values["vae"] = s["VAE"]

    cls, options = _scheduler(s, notes)
    values["scheduler"], values["scheduler_options"] = cls, options
    if "Dtype" in s:
        values["dtype"] = s["Dtype"]
    if "Generator device" in s:
        values["generator_device"] = s["Generator device"].lower()
    _rng(s, values, notes)

    values["prompt_syntax"] = _prompt_syntax(s, where)
    values["call"] = _call(s, notes)
    prompt, values["lora"], lora_notes = lora.from_a1111(params.prompt, lora.folders_for(base_dir or Path(".")),
                                                          trust.allow_pickle)
    notes += lora_notes + _lora_hash_notes(s.get("Lora hashes"), values["lora"])
    mapped = {"Steps", "Seed", "Size", "CFG scale", "Model", "VAE", "Sampler", "Schedule type", "Dtype",
              "Generator device", "Scheduler options", "Prompt syntax", "Clip skip", "Call", "RNG"}
    for key, value in s.items():
        if key in mapped or key in INFORMATIONAL or NEUTRAL.get(key) == value:
            continue
        why = "an img2img image: its source image is not in the PNG; made from text" \
            if key == "Denoising strength" else "not supported, ignored"
        notes.append(f"{key}: {value} ({why})")
    prompt = checked_prompt(prompt, where, "prompt")
    negative = checked_prompt(params.negative_prompt, where, "negative prompt")
    for text, label in ((prompt, "prompt"), (negative, "negative prompt")):
        notes += weighting.notes(text, values["prompt_syntax"], label)
        notes += [f"{label}: {m.group(0)} (not supported, ignored)" for m in A1111_NETWORK.finditer(text)]

    settings = checked_settings(values, f"{where}: parameters", trust, notes, base_dir)
    key = run_key(settings, seed, prompt, negative)
    experiment = (s.get("Tracker experiment") or FOREIGN_EXPERIMENT)[:limits.MAX_NAME_LENGTH]
    run = PlannedRun(key=key, index=0, experiment=experiment, axes=(("seed", str(seed)),), prompt=prompt,
                     negative_prompt=negative, prompt_template=prompt,
                     negative_template=negative, seed=seed, settings=settings)
    return run, notes


def _rng(s: Mapping[str, str], values: dict[str, Any], notes: list[str]) -> None:
    """A1111's ``RNG`` (where the initial noise is drawn): ``CPU`` is what the tracker does with a CPU generator;
    ``GPU`` (A1111's default, not written) is a CUDA generator when the PNG also says so in ``Generator device``;
    anything else (``NV``: A1111's own Philox on the CPU) is a note."""
    rng = (s.get("RNG") or "").strip()
    if not rng:
        return
    device = values.get("generator_device")
    if rng.upper() == "CPU":
        if device is None:
            values["generator_device"] = "cpu"
        elif device != "cpu":
            notes.append(f"RNG: {rng} (the PNG's Generator device {device} was used)")
    elif rng.upper() == "GPU" and device is not None and device.startswith("cuda"):
        return
    else:
        notes.append(f"RNG: {rng} (not supported: noise drawn with a {values.get('generator_device', 'cpu')} generator)")


def lora_hashes(text: str | None) -> dict[str, str]:
    """A1111's ``Lora hashes`` value (``name: hash, name: hash``) as name -> hash."""
    want = dict(part.split(":", 1) for part in (text or "").split(",") if ":" in part)
    return {k.strip(): v.strip() for k, v in want.items()}


def _names_the_file(model: str | None, model_hash: str, base_dir: Path | None) -> bool:
    """Whether the PNG's ``Model`` is a single file here whose hash is its ``Model hash``."""
    from tracker.experiment import model_refs, single_file

    if not model:
        return False
    ref = model_refs.resolve(model, base_dir)
    return ref.kind == "file" and Path(ref.location).is_file() and single_file.matches_hash(Path(ref.location),
                                                                                           model_hash)


def models_by_hash(candidates: Sequence[tuple[str, str]]) -> Callable[[str], str | None]:
    """``model_by_hash`` over (model, model_revision) pairs (``Store.models_with_revision``): the first single
    file that exists here and whose own sha256 (A1111's 10-digit ``Model hash``; the older 8-digit one is read
    from the file) matches, else None."""
    from tracker.experiment import model_refs, single_file

    def find(model_hash: str) -> str | None:
        h = model_hash.strip().lower()
        for model, revision in candidates:
            ref = model_refs.resolve(model)
            if ref.kind != "file" or not Path(ref.location).is_file():
                continue
            recorded = str(revision).split(":", 1)[-1]
            if (len(h) >= 10 and not recorded.startswith(h)) or not single_file.matches_hash(Path(ref.location), h):
                continue
            return single_file.canonical(ref.location, ref.config)
        return None

    return find


def _lora_hash_notes(hashes: str | None, adapters) -> list[str]:
    """A note per LoRA whose file here is not the one the PNG's ``Lora hashes`` names: either hash matches, A1111's
    (the addnet hash of a safetensors file) or the whole file's sha256 (what the tracker wrote before)."""
    want = lora_hashes(hashes)
    return [f"LoRA {a['name']}: the file found has hash {lora.a1111_hash(a)} (sha256 {a['sha256'][:12]}), "
            f"the PNG names {want[a['name']]}"
            for a in map(dict, adapters) if a["name"] in want and not lora.matches_hash(a, want[a["name"]])]


def _json_object(s: Mapping[str, str], field: str, notes: list[str]) -> dict[str, Any]:
    """A prompt-tracker field holding a JSON object (``Call``, ``Scheduler options``); {} with a note if it is not one."""
    import json

    if not s.get(field):
        return {}
    try:
        return dict(json.loads(s[field]))
    except (ValueError, TypeError):
        notes.append(f"{field}: {s[field]} (not a JSON object, ignored)")
        return {}


def _call(s: Mapping[str, str], notes: list[str]) -> dict[str, Any]:
    """prompt-tracker's ``Call`` (a JSON object of pipeline call arguments) and A1111's ``Clip skip`` (N: diffusers'
    clip_skip N-1; 1 is the last layer, diffusers' default)."""
    call = _json_object(s, "Call", notes)
    skip = s.get("Clip skip")
    if skip not in (None, "", "1"):
        if skip.isdigit() and 1 < int(skip) <= 12:
            call["clip_skip"] = int(skip) - 1
        else:
            notes.append(f"Clip skip: {skip} (not a number of layers from 1 to 12, ignored)")
    return call


def _prompt_syntax(s: Mapping[str, str], where: str) -> str:
    """The PNG's own ``Prompt syntax``; else plain for a PNG the tracker wrote, a1111 for one from elsewhere."""
    syntax = s.get("Prompt syntax") or ("plain" if "Tracker key" in s else "a1111")
    if syntax not in weighting.SYNTAXES:
        raise TrackerError(f"{where}: parameters Prompt syntax: {syntax!r} must be one of {', '.join(weighting.SYNTAXES)}")
    return syntax


def _scheduler(s: Mapping[str, str], notes: list[str]) -> tuple[str, dict[str, Any]]:
    """Sampler + Schedule type (+ prompt-tracker's Scheduler options) -> (class name, options)."""
    options = _json_object(s, "Scheduler options", notes)
    sampler = s.get("Sampler")
    if not sampler:
        return schedulers.DEFAULT, options
    schedule = s.get("Schedule type")
    try:
        cls, options = schedulers.resolve(sampler, options)
    except SpecError:
        notes.append(f"Sampler: {sampler} (unknown, used the model's own scheduler)")
        if schedule not in (None, "", "Automatic"):
            notes.append(f"Schedule type: {schedule} (not used: its sampler is unknown)")
        return schedulers.DEFAULT, {}
    if "Karras" in sampler and schedule in (None, "", "Automatic"):
        return cls, options  # an old-style name ("DPM++ 2M Karras") already says its schedule
    extra, note = schedulers.schedule_options(sampler, schedule)
    if note:
        notes.append(note)
    else:
        for opt in schedulers.SCHEDULE_OPTIONS.values():
            options.pop(opt, None)
        options.update(extra)
    return cls, options
