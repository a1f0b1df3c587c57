"""The efficiency view: seconds per image, images per second and peak memory per pipeline configuration."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from tracker.report.data import EfficiencyRow

if TYPE_CHECKING:
    from tracker.store.records import RunRecord


# ---------------------------------------------------------------------------------------------
# efficiency


EFFICIENCY_FIELDS = ("scheduler", "steps", "dtype", "batch", "memory options", "compile", "attention", "device", "model",
                     "size")


def _config(r: "RunRecord") -> tuple[tuple[str, str | None], ...]:
    """A run's pipeline configuration; None where a failed run never learned it (device, batch used)."""
    memory = [n for n, on in (("attention slicing", r.attention_slicing), ("VAE slicing", r.vae_slicing),
                              ("VAE tiling", r.vae_tiling), ("CPU offload", r.cpu_offload)) if on]
    batch = r.batch_size_used if r.batch_size_used is not None else r.batch_size
    values = (r.scheduler_choice.short, str(r.steps), r.dtype,
              str(batch) if isinstance(batch, int) else None, ", ".join(memory) or "none",
              _compile_label(r.compile), r.attention or "default", r.device if r.device not in (None, "auto") else None,
              r.model, f"{r.width}x{r.height}")
    return tuple(zip(EFFICIENCY_FIELDS, values))


def _compile_label(value: str | None) -> str:
    """"off", "on" (torch.compile defaults) or the options, as in an axis label."""
    from tracker.experiment.settings import setting_label

    return setting_label("compile", value or "off")


def _merge_unknown(groups: dict[tuple, list]) -> dict[tuple, list]:
    """Put runs whose configuration has unknowns into the one known configuration they fit, if unique;
    else fill each unknown with the value every known configuration shares (or "?")."""
    known = {c: rs for c, rs in groups.items() if all(v is not None for _, v in c)}
    out = dict(known)
    for c, rs in groups.items():
        if c in known:
            continue
        fits = [k for k in known if all(v is None or v == kv for (_, v), (_, kv) in zip(c, k))]
        target = fits[0] if len(fits) == 1 else tuple(
            (n, v if v is not None else _shared(known, i)) for i, (n, v) in enumerate(c))
        out.setdefault(target, []).extend(rs)
    return out


def _shared(configs: Iterable[tuple], i: int) -> str:
    values = {c[i][1] for c in configs}
    return values.pop() if len(values) == 1 else "?"


def efficiency(records: Sequence["RunRecord"], metric: Mapping[str, float | None] | None = None) -> tuple[EfficiencyRow, ...]:
    """Seconds per image, images per second and peak memory per pipeline configuration, in plan order;
    with ``metric`` (run key -> value), its mean per configuration too."""
    groups: dict[tuple, list] = {}
    for r in records:
        if r.status in ("done", "failed"):
            groups.setdefault(_config(r), []).append(r)
    if not groups:
        return ()
    groups = _merge_unknown(groups)
    order = {id(r): i for i, r in enumerate(records)}
    groups = dict(sorted(groups.items(), key=lambda kv: min(order[id(r)] for r in kv[1])))
    differ = [i for i, f in enumerate(EFFICIENCY_FIELDS) if len({c[i][1] for c in groups}) > 1]
    rows = [_efficiency_row(c, rs, differ, metric or {}) for c, rs in groups.items()]
    top_s = max((r.seconds_per_image or 0 for r in rows), default=0) or 1
    top_m = max((r.peak_memory_bytes or 0 for r in rows), default=0) or 1
    return tuple(replace(r, seconds_frac=(r.seconds_per_image or 0) / top_s,
                         memory_frac=(r.peak_memory_bytes or 0) / top_m) for r in rows)


def _efficiency_row(config: tuple, runs: Sequence["RunRecord"], differ: Sequence[int],
                    metric: Mapping[str, float | None]) -> EfficiencyRow:
    done = [r for r in runs if r.status == "done" and r.seconds is not None]
    spi = sum(r.seconds for r in done) / len(done) if done else None
    peaks = [r.peak_memory_bytes for r in runs if r.peak_memory_bytes]
    parts = [f"{config[i][0]} {config[i][1]}" if config[i][0] in ("steps", "batch", "compile", "attention") else config[i][1]
             for i in differ if config[i][1] != "none"]
    label = " · ".join(parts) or "all runs"
    scores = [metric[r.key] for r in runs if metric.get(r.key) is not None]
    return EfficiencyRow(label, config, len(runs), sum(r.status == "failed" for r in runs), spi,
                         1 / spi if spi else None, max(peaks) if peaks else None,
                         metric=sum(scores) / len(scores) if scores else None)
