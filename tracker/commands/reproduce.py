"""``tracker reproduce IMAGE.png|KEY`` and ``tracker verify EXPERIMENT``: do the pixels come back?"""

from __future__ import annotations

import click

from tracker import limits
from tracker.cli import mlflow_uri_option, pass_workspace
from tracker.workspace import WorkspaceConfig


@click.command()
@click.argument("target", metavar="IMAGE.png|KEY")
@click.option("--device", metavar="DEVICE", help="Generate on this device (cpu, cuda, cuda:1, mps) instead of the recipe's.")
@click.option("--model", metavar="MODEL",
              help="Use this model (builtin name, local folder or hub id), e.g. for a PNG from another tool.")
@click.option("--vae", metavar="VAE", help="Use this VAE (local folder or hub id) instead of the PNG's.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights (a PNG never switches this on).")
@click.option("--max-steps", type=click.IntRange(min=1), default=limits.MAX_REPRODUCE_STEPS, show_default=True,
              help="Refuse a PNG that asks for more steps.")
@click.option("--max-pixels", type=click.IntRange(min=64), default=limits.MAX_IMAGE_PIXELS, show_default=True,
              help="Refuse a PNG whose image or size has more pixels.")
@click.option("--save", type=click.Path(dir_okay=False), metavar="PATH", help="Also write the regenerated image here.")
@mlflow_uri_option
@pass_workspace
def reproduce(ws: WorkspaceConfig, target: str, device: str | None, model: str | None, vae: str | None, allow_pickle: bool,
              max_steps: int, max_pixels: int, save: str | None) -> int:
    """Generate an image again from its recipe and compare the pixels with the original.

    IMAGE.png: a PNG the tracker wrote (its prompt-tracker recipe), or one from another tool that carries
    an AUTOMATIC1111 "parameters" chunk. KEY: a run key (or unique prefix) in the run store.
    Exit status 0 when the pixels are identical, 1 when they differ.
    """
    from tracker.reproduce import regenerate as rp
    from tracker.reproduce.trust import Trust
    from tracker.api import Workspace as Api

    def announce(source) -> None:
        """Say what is regenerated before the (slow) generation starts."""
        where = (f"the {'recipe' if source.origin == 'recipe' else 'A1111 parameters'} in {target}"
                 if source.origin != "store" else f"the run store ({source.reference})")
        click.echo(f"reproducing run {source.run.key} of experiment {source.run.experiment} from {where}")
        click.echo(f"  {rp.describe_run(source.run)}")
        if source.notes:
            click.echo("not taken from the PNG:" if source.origin != "store" else "notes:")
            for note in source.notes:
                click.echo(f"  {note}")

    trust = Trust(model=model, vae=vae, allow_pickle=allow_pickle, max_steps=max_steps, max_pixels=max_pixels)
    result = Api(ws).reproduce(target, device=device, model=model, save=save, on_source=announce, trust=trust)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"{result.drift.describe()} (regenerated on {result.device})")
    if save:
        click.echo(f"regenerated image: {save}")
    return 0 if result.drift.identical else 1


@click.command()
@click.argument("experiment")
@click.option("--sample", "-n", type=click.IntRange(min=1), default=8, show_default=True,
              help="How many done runs to regenerate (the same seeded choice every time).")
@click.option("--device", metavar="DEVICE", help="Generate on this device instead of each run's.")
@mlflow_uri_option
@pass_workspace
def verify(ws: WorkspaceConfig, experiment: str, sample: int, device: str | None) -> int:
    """Regenerate a sample of EXPERIMENT's done runs and show the pixel drift of each.

    The result is stored with the experiment's latest sweep (shown in the report).
    Exit status 1 when any image drifted.
    """
    from tracker.reproduce import verify as vf
    from tracker.api import Workspace as Api

    result = Api(ws).verify(experiment, sample=sample, device=device)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(vf.format_table(result.rows, result.device))
    identical = sum(r.drift.identical for r in result.rows)
    within = len(result.rows) - identical - result.drifted
    click.echo(f"{experiment}: {identical} of {len(result.rows)} sampled runs identical"
               + (f", {within} within {vf.GPU_LEVELS} levels (GPU kernels)" if within else "")
               + f", {result.drifted} differ ({result.done} done; each regenerated in its original batch); "
               f"stored with sweep {result.sweep_id}")
    return 1 if result.drifted else 0
