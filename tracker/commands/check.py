"""``tracker check [EXPERIMENT] [--fix]``: every done run's image against its recorded sha256."""

from __future__ import annotations

import click

from tracker.cli import pass_workspace
from tracker.workspace import WorkspaceConfig


@click.command()
@click.argument("experiment", required=False)
@click.option("--fix", is_flag=True, help="Mark runs with a missing or modified image pending (tracker run makes them again).")
@pass_workspace
def check(ws: WorkspaceConfig, experiment: str | None, fix: bool) -> int:
    """Check that every done run's image exists and still has the sha256 recorded when it was made.

    Missing or modified images are listed (exit status 1); --fix marks those runs pending so the next
    `tracker run` of the experiment regenerates them.
    """
    from tracker.images import check as chk
    from tracker.errors import NotFoundError
    from tracker.store.runstore import Store

    with Store.open(ws.db_url, create=False, home=ws.home) as store:
        if experiment is not None and store.experiment(experiment) is None:
            raise NotFoundError(f"no experiment {experiment!r} in the run store {store.url}")
        checked, problems = chk.check(store, experiment)
        for p in problems:
            click.echo(f"{p.kind:8}  {p.experiment}  {p.key}  {p.image or '(no file recorded)'}")
        if fix and problems:
            chk.fix(store, problems)
    what = f"{len(problems)} of {checked} done runs have a missing or modified image" if problems \
        else f"all {checked} done runs have their image, unchanged"
    click.echo(what + ("; marked pending: run the experiment again to regenerate them" if fix and problems else
                       "; --fix marks them pending" if problems else ""))
    return 1 if problems and not fix else 0
