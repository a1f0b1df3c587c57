"""``tracker expand FILE``: print the plan an experiment file expands into."""

from __future__ import annotations

import json

import click

from tracker.experiment.plan import DEFAULT_MAX_RUNS, Plan
from tracker.textfmt import short, table


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per run.")
@click.option("--max-runs", type=click.IntRange(min=1), default=DEFAULT_MAX_RUNS, show_default=True,
              help="Refuse plans larger than this.")
def expand(file: str, as_json: bool, max_runs: int) -> None:
    """Expand an experiment FILE into its plan of runs (one run = one image)."""
    from tracker.api import Experiment

    p = Experiment.from_yaml(file).plan(max_runs=max_runs)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in p.runs], indent=2, ensure_ascii=False))
        return
    click.echo(render_plan(p))


def render_plan(p: Plan, limit: int | None = None) -> str:
    """A readable summary: totals, runs per axis label, then a table of runs."""
    exp = p.experiment
    lines = [f"{exp.name}: {len(p.runs)} runs"
             + (f" ({p.combinations - len(p.runs)} combinations share a run key with another)" if p.combinations != len(p.runs) else "")]
    lines.append("runs per axis:")
    for axis, counts in p.labels_per_axis().items():
        parts = ", ".join(f"{short(lab, 24)}={n}" for lab, n in counts.items())
        lines.append(f"  {axis} ({len(counts)}): {parts}")
    axes = [a.name for a in exp.axes if a.name != "seed"]
    header = ["#", "key", *axes, "seed", "scheduler", "steps", "cfg", "size", "dtype", "prompt"]
    rows = []
    for r in p.runs[:limit] if limit else p.runs:
        s = r.settings
        labels = r.labels
        rows.append([str(r.index), r.key, *(short(labels[a], 18) for a in axes), str(r.seed),
                     s.scheduler_choice.short, str(s.steps), f"{s.guidance_scale:g}",
                     f"{s.width}x{s.height}", s.dtype, _prompt_cell(r.prompt, r.negative_prompt)])
    lines.append(table(header, rows, fit_last=True))
    if limit and len(p.runs) > limit:
        lines.append(f"... {len(p.runs) - limit} more (use --json for all)")
    return "\n".join(lines)


def _prompt_cell(prompt: str, negative: str) -> str:
    return prompt + (f"  [neg: {negative}]" if negative else "")
