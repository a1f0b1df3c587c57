"""``tracker report`` (the HTML report folder) and ``tracker grid`` (labelled PNG grids).

Thin: options in, ``tracker.report`` does the work. Nothing heavy is imported at module level.
"""

from __future__ import annotations

from pathlib import Path

import click

from tracker.cli import mlflow_uri_option, pass_workspace
from tracker.images.grid import DEFAULT_MAX_PIXELS, REPORT_MAX_PIXELS



def _pixels(value: str) -> int:
    """64000000, 64M or 64MP."""
    text = value.strip().upper().removesuffix("P").removesuffix("PX")
    scale = 1_000_000 if text.endswith("M") else 1
    try:
        n = int(float(text.removesuffix("M")) * scale)
    except ValueError:
        n = 0
    if n <= 0:
        from tracker.errors import UsageError
        raise UsageError(f"--max-pixels must be a positive number of pixels such as 64000000 or 64M but is {value!r}")
    return n


@click.command()
@click.argument("experiment")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder [default: HOME/reports/EXPERIMENT].")
@click.option("--rows", metavar="AXIS", help="Axis down the grids [default: the file's grid:, else the prompt axis with the most labels].")
@click.option("--cols", metavar="AXIS", help="Axis across the grids [default: the file's grid:, else seed].")
@click.option("--max-pixels", default=str(REPORT_MAX_PIXELS), show_default=True, metavar="N",
              help="Pixel budget of each grid image the report links; larger grids get smaller tiles "
                   "(tracker grid makes full-size ones).")
@click.option("--no-mlflow", is_flag=True, help="Do not attach the report to the sweep's MLflow run (nor link runs).")
@click.option("--mlflow-ui-url", metavar="URL", envvar="TRACKER_MLFLOW_UI_URL",
              help="Where the report's MLflow links point [default: where `tracker ui` last served, "
                   "else http://127.0.0.1:5000].")
@mlflow_uri_option
@pass_workspace
def report(ws, experiment: str, out: Path | None, rows: str | None, cols: str | None, max_pixels: str,
           no_mlflow: bool, mlflow_ui_url: str | None) -> None:
    """Write an HTML report of EXPERIMENT: one seed-fixed grid per combination of the other axes,
    run details, and an efficiency view. The folder opens from disk, without a server or network.

    Axes that still vary besides --rows and --cols split the report into one grid per combination.
    """
    from tracker.api import Workspace as Api

    if mlflow_ui_url:
        from dataclasses import replace

        from tracker.errors import UsageError

        if not mlflow_ui_url.startswith(("http://", "https://")):
            raise UsageError(f"--mlflow-ui-url must start with http:// or https:// but is {mlflow_ui_url!r}")
        ws = replace(ws, mlflow_ui_url=mlflow_ui_url)
    index, data, warning = Api(ws).build_report(experiment, out, rows=rows, cols=cols, max_pixels=_pixels(max_pixels),
                                                attach_mlflow=not no_mlflow)
    cells = sum(len(r.cells) for g in data.grids for r in g.rows)
    click.echo(f"report: {len(data.grids)} grid{'s' if len(data.grids) != 1 else ''}, {cells} cells "
               f"(rows: {data.rows_axis or '-'}, columns: {data.cols_axis or '-'})", err=True)
    if data.image_problems:
        click.echo(data.image_problem_line(), err=True)
    if data.images_note:
        click.echo(data.images_note, err=True)
    if warning:
        click.echo(warning, err=True)
    click.echo(index.as_uri())


@click.command()
@click.argument("experiment")
@click.option("--rows", metavar="AXIS", help="Axis down the grid [default: as in tracker report].")
@click.option("--cols", metavar="AXIS", help="Axis across the grid [default: as in tracker report].")
@click.option("--where", "where", multiple=True, metavar="AXIS=LABEL",
              help="Keep only runs with this label (repeatable).")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write [default: EXPERIMENT-grid.png].")
@click.option("--max-pixels", default=str(DEFAULT_MAX_PIXELS), show_default=True, metavar="N",
              help="Pixel budget (64000000 or 64M); past it tiles are scaled down, never refused.")
@click.option("--no-mlflow", is_flag=True, help="Do not attach the PNGs to the sweep's MLflow run.")
@mlflow_uri_option
@pass_workspace
def grid(ws, experiment: str, rows: str | None, cols: str | None, where: tuple[str, ...], out: Path | None,
         max_pixels: str, no_mlflow: bool) -> None:
    """Write a labelled PNG grid of EXPERIMENT's images, AXIS labels drawn beside the rows and columns.

    When axes other than --rows and --cols still have several labels (and --where does not pin them),
    one PNG is written per combination, named OUTPUT-STEM-axis=label,...png beside OUTPUT.
    Failed or missing runs are drawn as labelled placeholders.
    """
    from tracker.api import Workspace as Api

    budget = _pixels(max_pixels)
    out = out or Path(f"{experiment}-grid.png")
    written, warning = Api(ws).write_grids(experiment, out, rows=rows, cols=cols, where=where, max_pixels=budget,
                                           attach_mlflow=not no_mlflow)
    for g in written:
        if g.scaled:
            click.echo(g.scale_note(budget), err=True)
        click.echo(str(g.path))
    if warning:
        click.echo(warning, err=True)
