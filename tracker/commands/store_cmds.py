"""Reading the run store: ``tracker runs``, ``tracker show``, ``tracker experiments``, ``tracker db``.

SQLAlchemy and Alembic are imported inside the commands, so ``tracker --help`` stays fast.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from tracker.cli import pass_workspace
from tracker.experiment.plan import STATUSES
from tracker.textfmt import table
from tracker.workspace import WorkspaceConfig

if TYPE_CHECKING:
    from tracker.store.records import RunRecord



def when_text(t: datetime | None) -> str:
    """A stored UTC time as the commands print it; "-" for none."""
    return t.strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def number_text(v: float | None, fmt: str = "{:.2f}") -> str:
    """A number as the commands' tables print it; "-" for none."""
    return "-" if v is None else fmt.format(v)


def echo_json(data: Any) -> None:
    """``--json``: the data, indented, times in ISO 8601."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


# ---------------------------------------------------------------------------------------------


@click.command()
@click.argument("experiment", required=False)
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only runs with this status (repeatable).")
@click.option("--where", "where", multiple=True, metavar="AXIS=LABEL|METRIC>N",
              help="Only runs with this axis label (--where seed=1) or metric value (--where shapes>=0.5; "
                   "<, <=, >, >=, =, !=) (repeatable; all must match).")
@click.option("--sort", "sort", metavar="[-]METRIC", help="Order by a stored metric (or seconds); -NAME for descending.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per run (metrics included).")
@click.option("--all-versions", is_flag=True,
              help="Also the runs of earlier versions of the experiment file (not in its current plan).")
@pass_workspace
def runs(ws: WorkspaceConfig, experiment: str | None, statuses: tuple[str, ...], where: tuple[str, ...],
         sort: str | None, as_json: bool, all_versions: bool) -> None:
    """List the stored runs of EXPERIMENT (all experiments when left out): those of its current plan (the file
    as last run), as effects and the report use them; --all-versions adds those of earlier versions."""
    from tracker.api import Workspace as Api

    api = Api(ws)
    found = list(api.runs(experiment, where=where, status=statuses or None, all_versions=all_versions))
    if not all_versions:
        hidden = len(api.runs(experiment, where=where, status=statuses or None, all_versions=True)) - len(found)
        if hidden:
            click.echo(f"{hidden} run{'s' if hidden != 1 else ''} of earlier versions of the experiment file "
                       f"not listed (--all-versions lists them)", err=True)
    if sort:
        found = _sorted(found, sort)
    if as_json:
        echo_json([{**r.record.to_json(), "metrics": r.metrics} for r in found])
        return
    if not found:
        click.echo("no runs" + (" match" if statuses or where else ""), err=True)
        return
    click.echo(render_runs([r.record for r in found], show_experiment=experiment is None,
                           metrics=[r.metrics for r in found]))


def _sorted(found: list, sort: str) -> list:
    """Runs (tracker.results.Run) by a metric or seconds; runs without a value last, either way."""
    from tracker.errors import UsageError

    desc, name = sort.startswith("-"), sort.lstrip("-")
    metric_names = sorted({n for r in found for n in r.metrics})
    if name not in metric_names and name != "seconds":
        raise UsageError(f"--sort {sort!r}: no stored metric {name!r}; sortable: {', '.join([*metric_names, 'seconds'])}")

    def value(r):
        return r.record.seconds if name == "seconds" else r.metrics.get(name)

    have = [r for r in found if value(r) is not None]
    return sorted(have, key=value, reverse=desc) + [r for r in found if value(r) is None]


def render_runs(records: list["RunRecord"], show_experiment: bool = False, metrics: list[dict] | None = None) -> str:
    """A table: key, status, one column per axis (its labels), then seed, scheduler, steps, seconds, the
    stored metrics (``metrics[i]`` of ``records[i]``) and image; a setting that is also an axis shows once,
    as the axis."""
    metrics = metrics or [{} for _ in records]
    names = sorted({n for m in metrics for n in m if "." not in n})
    axes: list[str] = []
    for r in records:
        axes.extend(a for a in r.axes if a not in axes)
    fixed = [c for c in ("seed", "scheduler", "steps") if c not in axes]
    header = (["experiment"] if show_experiment else []) + ["key", "status", *axes, *fixed, "seconds", *names, "image"]
    rows = []
    for r, m in zip(records, metrics):
        values = {"seed": str(r.seed), "scheduler": r.scheduler_choice.short, "steps": str(r.steps)}
        rows.append(([r.experiment] if show_experiment else []) + [
            r.key, r.status, *(r.axes.get(a, "-") for a in axes), *(values[c] for c in fixed), number_text(r.seconds),
            *(number_text(m.get(n), "{:.3f}") for n in names), r.image or (f"error: {r.error}" if r.error else "-")])
    return table(header, rows, max_width=24)


@click.command()
@click.argument("key")
@click.option("-e", "--experiment", metavar="NAME", help="Look only in this experiment.")
@click.option("--json", "as_json", is_flag=True, help="Print the run as one JSON object.")
@pass_workspace
def show(ws: WorkspaceConfig, key: str, experiment: str | None, as_json: bool) -> None:
    """Show every stored field of one run. KEY may be a unique prefix of the run key."""
    from tracker.api import Workspace as Api

    run = Api(ws).run(key, experiment)
    if as_json:
        echo_json({**run.record.to_json(), "metrics": run.metrics})
        return
    click.echo(render_run(run.record, run.metrics))


def render_run(record: "RunRecord", scores: dict | None = None) -> str:
    data = {**record.to_json(), "metrics": scores or {}}
    width = max(len(k) for k in data)
    lines = []
    for name, value in data.items():
        if name == "run":  # the planned run: its values are the lines above, once is enough
            value = f"{record.experiment} #{record.run.index} (planned: the values above)"
        elif name == "unrecorded":
            value = ", ".join(value) or None
        if isinstance(value, dict):
            text = json.dumps(value, ensure_ascii=False, sort_keys=name != "axes") if value else "{}"
        elif value is None:
            text = "-"
        else:
            text = str(value)
        lines.append(f"{name.ljust(width)}  {text}")
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per experiment.")
@pass_workspace
def experiments(ws: WorkspaceConfig, as_json: bool) -> None:
    """List the experiments in the run store: runs by status and the last sweep."""
    from tracker.api import Workspace as Api

    items = [e.info for e in Api(ws).experiments()]
    if as_json:
        echo_json(items)
        return
    if not items:
        click.echo("no experiments yet (tracker run FILE)", err=True)
        return
    header = ["name", "runs", *STATUSES, "last sweep"]
    rows = []
    for e in items:
        s = e["last_sweep"]
        last = f"#{s['id']} {when_text(s['started_at'])} {s['status']}" if s else "-"
        rows.append([e["name"], str(e["total"]), *(str(e["runs"].get(st, 0)) for st in STATUSES), last])
    click.echo(table(header, rows, max_width=40))


# ---------------------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """The run store's schema (upgraded automatically on first use)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target schema revision.")
@pass_workspace
def db_upgrade(ws: WorkspaceConfig, revision: str) -> None:
    """Create the run store or migrate it to the newest schema."""
    from tracker.store import db as dbmod
    before, after = dbmod.upgrade(ws.db_url, revision, home=ws.home)
    where = dbmod.display_url(ws.db_url)
    if before == after:
        click.echo(f"{where}: already at {after}")
    else:
        click.echo(f"{where}: {before or '(empty)'} -> {after}")


@db.command("current")
@pass_workspace
def db_current(ws: WorkspaceConfig) -> None:
    """Print the run store's schema revision and the newest this version knows."""
    from tracker.store import db as dbmod
    where = dbmod.display_url(ws.db_url)
    path = dbmod.sqlite_path(ws.db_url)
    rev = None if path is not None and not path.exists() else dbmod.current(ws.db_url)
    dbmod.check_known(ws.db_url, rev)  # a revision from a newer prompt-tracker: say so, exit 2
    head = dbmod.head()
    state = "(no database yet)" if rev is None else rev
    note = " (head)" if rev == head else f" (newest known: {head}; run tracker db upgrade)"
    click.echo(f"{where}: {state}{note}")
