"""``tracker verify``: regenerate a seeded sample of an experiment's done runs, each in the batch it was
first made in, and report how far its pixels moved (stored with the experiment's latest sweep).

Built on ``tracker.reproduce.regenerate`` (the pixel comparison, the environment warnings, the batch executor's
collector) and ``tracker.engine.batches``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from tracker.engine import batches
from tracker.images import pngmeta
from tracker.errors import NotFoundError, TrackerError
from tracker.reproduce.regenerate import (Collected, Drift, compare, current_facts, edited_note, environment_warnings,
                                         new_engine, original_facts, check_inputs)
from tracker.textfmt import table

DEFAULT_SAMPLE = 8


@dataclass(frozen=True)
class VerifyRow:
    key: str
    labels: dict[str, str]
    drift: Drift
    deterministic: bool = False  # made (and regenerated) with torch's deterministic algorithms


@dataclass(frozen=True)
class Verification:
    experiment: str
    sweep_id: int
    done: int  # done runs in the experiment
    rows: tuple[VerifyRow, ...]
    warnings: tuple[str, ...]
    device: str | None

    @property
    def drifted(self) -> int:
        """Runs that differ (drift within GPU kernel noise on CUDA is reported, not counted)."""
        return sum(verdict(r.drift, self.device, r.deterministic) == "differs" for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        """What ``Store.update_sweep(sweep_id, verify=...)`` stores and the report shows."""
        return {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sample": len(self.rows), "done": self.done, "identical": sum(r.drift.identical for r in self.rows),
            "drifted": self.drifted, "device": self.device,
            "max_abs": max((r.drift.max_abs for r in self.rows), default=0),
            "warnings": list(self.warnings),
            "runs": [{"key": r.key, "labels": r.labels, **r.drift.to_json(), "deterministic": r.deterministic}
                     for r in self.rows],
        }


def sample_runs(records: Sequence[Any], n: int) -> list[Any]:
    """The same ``n`` runs every time (seeded choice over keys), in plan order."""
    by_key = sorted(records, key=lambda r: r.key)
    picked = {r.key for r in random.Random(0).sample(by_key, min(n, len(by_key)))}
    return [r for r in records if r.key in picked]


GPU_LEVELS = 2  # on CUDA, kernels are not bit-exact across runs: drift up to this many 8-bit levels is reported as such


def original_batches(done: Sequence[Any], sampled: Sequence[Any]) -> list[list[Any]]:
    """The batches the sampled runs were first made in: the runs of one sweep that started together
    (``mark_running`` stamps a batch at once) with equal settings, in plan order; each batch once."""
    def batch_id(r: Any) -> tuple:
        return (r.sweep_id, r.started_at, r.settings())

    members: dict[tuple, list[Any]] = {}
    for r in done:
        if r.started_at is not None:
            members.setdefault(batch_id(r), []).append(r)
    out, seen = [], set()
    for rec in sampled:
        bid = batch_id(rec)
        if bid in seen:
            continue
        seen.add(bid)
        batch = members.get(bid) or [rec]
        out.append(sorted(batch, key=lambda r: (r.plan_index or 0, r.key)))
    return out


def verdict(drift: Drift, device: str | None, deterministic: bool = False) -> str:
    """"identical", "within N levels (GPU kernels)" (CUDA only) or "differs". A run made with the
    ``deterministic`` setting gets no such allowance: torch's deterministic algorithms make the same batch on
    the same GPU and software bit-exact, so any difference is drift."""
    if drift.identical:
        return "identical"
    if not drift.reason and not deterministic and (device or "").startswith("cuda") and drift.max_abs <= GPU_LEVELS:
        return f"within {drift.max_abs} levels (GPU kernels)"
    return "differs"


def verify(store, experiment: str, sample: int = DEFAULT_SAMPLE, device: str | None = None, engine=None,
           images=None) -> Verification:
    """Regenerate a seeded sample of the experiment's done runs; store the result with its latest sweep.
    ``images`` (``tracker.mlflow.fetch.Images``) finds the stored images; without it, the recorded paths."""
    if sample < 1:
        raise TrackerError(f"--sample must be at least 1 but is {sample}")
    if store.experiment(experiment) is None:
        known = ", ".join(e["name"] for e in store.experiments()) or "none yet"
        raise NotFoundError(f"no experiment {experiment!r} in the run store; known: {known}")
    done = store.runs(experiment, status="done")
    sweeps = store.sweeps(experiment)
    if not done or not sweeps:
        raise TrackerError(f"experiment {experiment!r} has no done runs to verify; run it first (tracker run)")
    records = sample_runs(done, sample)
    engine = engine or new_engine(device, store.home / "inputs")
    for rec in records:  # an input image gone from the workspace: one line, before anything generates
        check_inputs(rec.planned(), engine.inputs_dir, f"run {rec.key}")
    environments = {s["id"]: s.get("environment") or {} for s in sweeps}
    warnings: list[str] = []
    device_used = None
    for rec in records:
        current = current_facts(engine, rec.planned())
        device_used = current["device_used"]
        original = original_facts(rec.to_recipe(environment=environments.get(rec.sweep_id)))
        warnings += [w for w in environment_warnings(original, current) if w not in warnings]
    from tracker.mlflow.fetch import in_workspace

    found = {r.key: images.locate(r, modified_ok=True) if images is not None else in_workspace(r, modified_ok=True)
             for r in records}
    present = [r for r in records if found[r.key].path is not None]
    warnings += [edited_note(r) for r in present if found[r.key].state is not None]
    collected = Collected()
    for batch in original_batches(done, present):  # same companions, same order: batching shifts pixels
        runs = [r.planned() for r in batch]
        batches.execute(engine, runs, len(runs), collected)
    made = collected.images
    rows = []
    for rec in records:
        rows.append(VerifyRow(rec.key, dict(rec.axes), _drift_of(found[rec.key], made.get(rec.key)),
                              bool(rec.deterministic)))
    result = Verification(experiment, sweeps[-1]["id"], len(done), tuple(rows), tuple(warnings), device_used)
    store.update_sweep(result.sweep_id, verify=result.to_json())
    return result


def _drift_of(original, image) -> Drift:
    """``original``: where the stored image was found (``fetch.Found``); ``image``: the regenerated one."""
    if original.path is None:
        return Drift.failed(original.problem or "the original image is missing")
    if image is None:
        return Drift.failed("no image was generated")
    if image.image is None:
        return Drift.failed(f"no image was generated: {image.error}")
    try:
        with pngmeta.open_png(original.path) as ref:
            return compare(ref, image.image)
    except TrackerError as e:
        return Drift.failed(str(e))


def format_table(rows: Iterable[VerifyRow], device: str | None = None) -> str:
    """key, labels, max/mean abs diff, result (identical / within N levels (GPU kernels) / differs)."""
    header = ("key", "labels", "max", "mean", "result")
    lines = [(r.key, ", ".join(f"{k}={v}" for k, v in r.labels.items()) or "-",
              str(r.drift.max_abs), f"{r.drift.mean_abs:.4f}",
              verdict(r.drift, device, r.deterministic) + (": " + r.drift.reason if r.drift.reason else ""))
             for r in rows]
    return table(header, lines, rule=True)
