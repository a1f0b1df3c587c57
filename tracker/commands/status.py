"""``tracker status EXPERIMENT``: where a sweep stands, with every worker that took part and the claims
of workers that stopped renewing their lease."""

from __future__ import annotations

import click

from tracker.cli import pass_workspace
from tracker.commands.store_cmds import echo_json, number_text, when_text
from tracker.textfmt import table
from tracker.workspace import Workspace


@click.command()
@click.argument("experiment")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_workspace
def status(ws: Workspace, experiment: str, as_json: bool) -> None:
    """Runs planned, done, running, pending and failed; each worker (host, device, runs done, images/s,
    last seen); claims held past their lease (a worker that died: they are claimed again by others)."""
    from tracker.sweep import claims
    from tracker.store.runstore import Store

    with Store.open(ws.db_url, create=False, home=ws.home) as store:
        st = claims.status(store, experiment)
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
