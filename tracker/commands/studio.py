"""``tracker studio`` (compare and rate images in the browser) and ``tracker ratings`` (the judgements made
there: export and Bradley-Terry strengths). Nothing heavy at module level."""

from __future__ import annotations

import csv
import io
import json

import click

from tracker.cli import pass_workspace
from tracker.errors import UsageError
from tracker.workspace import WorkspaceConfig


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Keep it local: anyone with the printed URL can read and rate.")
@click.option("--rater", metavar="NAME", help="Default rater name shown in the pages.")
@pass_workspace
def studio(ws: WorkspaceConfig, port: int, host: str, rater: str | None) -> int:
    """Compare and rate the workspace's images in the browser (Ctrl-C stops it).

    Prints a URL with a random token: every request needs it. Ratings go to the run store, become the
    `rating`/`thumbs` metrics (tracker effects --metric rating, the report, tracker sync to MLflow), and
    pairwise judgements give Bradley-Terry strengths (tracker ratings EXP).
    """
    from tracker.studio.app import serve

    if not ws.has_store():
        raise UsageError(f"no run store in {ws.home}: run an experiment first (tracker run FILE)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: other machines can reach the studio; the token is the only guard",
                   err=True)
    return serve(ws, host, port, rater, echo=click.echo)


@click.command()
@click.argument("experiment")
@click.option("--json", "as_json", is_flag=True, help="Every judgement and the strengths as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Every judgement as CSV.")
@click.option("--axis", metavar="AXIS", help="Bradley-Terry strengths for this axis only [default: each judged axis].")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap resampling.")
@pass_workspace
def ratings(ws: WorkspaceConfig, experiment: str, as_json: bool, as_csv: bool, axis: str | None, seed: int) -> None:
    """The judgements of EXPERIMENT's images: scores, thumbs and pairs, and Bradley-Terry strengths per axis."""
    from tracker.metrics import bradley_terry as bt
    from tracker.metrics import ratings as rt
    from tracker.store.runstore import Store

    if as_json and as_csv:
        raise UsageError("--json and --csv: choose one")
    with Store.open(ws.db_url, create=False) as store:
        rows = rt.list_ratings(store, experiment)
        pairs = rt.judgements(store, experiment, axis)
        labels = store.axes(experiment)
    if axis is not None and axis not in labels:
        raise UsageError(f"--axis {axis!r}: experiment {experiment!r} has axes {', '.join(labels) or '(none)'}")
    by_axis: dict[str, list] = {}
    for name, a, b, outcome, s in pairs:
        by_axis.setdefault(name, []).append(bt.Judgement(a, b, outcome, s))
    strengths = {name: bt.strengths(js, labels.get(name), seed=seed) for name, js in by_axis.items()}
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "experiment", "key", "kind", "value", "other_key", "rater", "comment", "created_at"])
        for r in rows:
            d = r.to_dict()
            w.writerow([d[c] for c in ("id", "experiment", "key", "kind", "value", "other_key", "rater", "comment",
                                       "created_at")])
        click.echo(buf.getvalue(), nl=False)
        return
    if as_json:
        click.echo(json.dumps({"experiment": experiment, "ratings": [r.to_dict() for r in rows],
                               "strengths": {k: v.to_json() for k, v in strengths.items()}}, indent=2))
        return
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    click.echo(f"{experiment}: {len(rows)} judgements"
               + (" (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")" if rows else ""))
    for name, s in strengths.items():
        click.echo(bt.render(name, s))
