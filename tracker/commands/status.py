"""``tracker status EXPERIMENT``: where a sweep stands, with every worker that took part and the claims
of workers that stopped renewing their lease."""

from __future__ import annotations

import click

from tracker.cli import pass_workspace
from tracker.commands.store_cmds import echo_json, number_text, when_text
from tracker.textfmt import table
from tracker.workspace import WorkspaceConfig


@click.command()
@click.argument("experiment", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_workspace
def status(ws: WorkspaceConfig, experiment: str | None, as_json: bool) -> None:
    """Runs planned, done, running, pending and failed; each worker (host, device, runs done, images/s,
    last seen); claims held past their lease (a worker that died: they are claimed again by others).
    Without EXPERIMENT: the warm workers (`tracker worker`) and what they are doing."""
    from tracker.sweep import claims, queue
    from tracker.store.runstore import Store

    with Store.open(ws.db_url, create=False, home=ws.home) as store:
        if experiment is None:
            warm = queue.warm_workers(store)
            waiting = queue.queued(store)
        else:
            st = claims.status(store, experiment)
    if experiment is None:
        _warm(warm, waiting, as_json)
        return
    if as_json:
        echo_json(st)
        return
    r = st["runs"]
    click.echo(f"{experiment}: {st['planned']} planned, {r['done']} done, {r['running']} running, "
               f"{r['pending']} pending, {r['failed']} failed")
    if st["workers"]:
        rows = [[str(w["id"]), w["name"], w["host"] or "-", w["device"] or "-", w["status"], str(w["runs_done"]),
                 str(w["holding"]), number_text(w["images_per_second"]), when_text(w["last_seen"]),
                 f"{w['seen_seconds_ago']:.0f} s ago"] for w in st["workers"]]
        click.echo(table(["worker", "name", "host", "device", "status", "done", "holding", "images/s", "last seen",
                          ""], rows))
    else:
        click.echo("no workers yet")
    stale = st["expired_claims"]
    if stale:
        click.echo(f"{len(stale)} claims past their lease (claimable again): "
                   + ", ".join(f"{c['key'][:12]} ({c['worker'] or 'no worker'})" for c in stale[:10])
                   + (" ..." if len(stale) > 10 else ""))


def _warm(warm: list[dict], waiting: list, as_json: bool) -> None:
    """The warm workers table and the queue."""
    queue_runs = sum(q.runs for q in waiting)
    if as_json:
        echo_json({"warm_workers": warm, "queue": {"runs": queue_runs, "sweeps": [
            {"sweep_id": q.sweep_id, "experiment": q.experiment, "runs": q.runs, "by": q.submission.get("by"),
             "priority": q.submission.get("priority", 0)} for q in waiting]}})
        return
    if not warm:
        click.echo("no warm workers (start one with `tracker worker`)")
    else:
        rows = []
        for w in warm:
            a = w["activity"]
            rows.append([str(w["id"]), w["name"], w["device"] or "-", w["status"], a.get("experiment") or "-",
                         number_text(a.get("images_per_second")), str(a.get("made", w["runs_done"])),
                         ", ".join(a.get("models") or []) or "-", when_text(w["last_seen"]),
                         f"{w['seen_seconds_ago']:.0f} s ago"])
        click.echo(table(["worker", "name", "device", "status", "experiment", "images/s", "made", "loaded",
                          "last seen", ""], rows))
    click.echo(f"queue: {queue_runs} runs in {len(waiting)} submitted sweeps"
               + "".join(f"\n  {q.experiment} (sweep {q.sweep_id}, {q.runs} runs, by {q.submission.get('by')}, "
                         f"priority {q.submission.get('priority', 0)})" for q in waiting[:20]))
