"""``tracker expand FILE``: print the plan an experiment file expands into."""

from __future__ import annotations

import json
import shutil

import click

from tracker.plan import DEFAULT_MAX_RUNS, Plan


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per run.")
@click.option("--max-runs", type=click.IntRange(min=1), default=DEFAULT_MAX_RUNS, show_default=True,
              help="Refuse plans larger than this.")
def expand(file: str, as_json: bool, max_runs: int) -> None:
    """Expand an experiment FILE into its plan of runs (one run = one image)."""
    from tracker import plan, spec

    p = plan.expand(spec.parse_file(file), max_runs=max_runs)
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
        parts = ", ".join(f"{_short(lab, 24)}={n}" for lab, n in counts.items())
        lines.append(f"  {axis} ({len(counts)}): {parts}")
    axes = [a.name for a in exp.axes if a.name != "seed"]
    header = ["#", "key", *axes, "seed", "scheduler", "steps", "cfg", "size", "dtype", "prompt"]
    rows = []
    for r in p.runs[:limit] if limit else p.runs:
        s = r.settings
        labels = r.labels
        rows.append([str(r.index), r.key, *(_short(labels[a], 18) for a in axes), str(r.seed),
                     s.scheduler.removesuffix("Scheduler"), str(s.steps), f"{s.guidance_scale:g}",
                     f"{s.width}x{s.height}", s.dtype, _prompt_cell(r.prompt, r.negative_prompt)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
    widths[-1] = max(20, min(widths[-1], shutil.get_terminal_size((160, 20)).columns - fixed))
    fmt = lambda row: "  ".join(_short(c, widths[i]).ljust(widths[i]) for i, c in enumerate(row)).rstrip()  # noqa: E731
    lines.append(fmt(header))
    lines.extend(fmt(row) for row in rows)
    if limit and len(p.runs) > limit:
        lines.append(f"... {len(p.runs) - limit} more (use --json for all)")
    return "\n".join(lines)


def _prompt_cell(prompt: str, negative: str) -> str:
    return prompt + (f"  [neg: {negative}]" if negative else "")


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"
