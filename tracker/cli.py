"""The ``tracker`` command. Thin: parse options, call domain code, print.

One place for errors: ``main`` turns every ``TrackerError`` into one line on stderr and its exit status.
Commands live in ``tracker/commands/*`` and are imported only when called (or listed by --help), and
none of them imports torch, diffusers or mlflow at module level, so ``tracker --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from tracker.version import __version__
from tracker.errors import TrackerError
from tracker.workspace import WorkspaceConfig

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "expand": "tracker.commands.expand:expand",
    "run": "tracker.commands.run:run",
    "runs": "tracker.commands.store_cmds:runs",
    "show": "tracker.commands.store_cmds:show",
    "experiments": "tracker.commands.store_cmds:experiments",
    "status": "tracker.commands.status:status",
    "worker": "tracker.commands.worker:worker",
    "watch": "tracker.commands.worker:watch",
    "db": "tracker.commands.store_cmds:db",
    "models": "tracker.commands.models:models",
    "sync": "tracker.commands.mlflow_cmds:sync",
    "ui": "tracker.commands.mlflow_cmds:ui",
    "report": "tracker.commands.report:report",
    "grid": "tracker.commands.report:grid",
    "reproduce": "tracker.commands.reproduce:reproduce",
    "verify": "tracker.commands.reproduce:verify",
    "score": "tracker.commands.metrics_cmds:score",
    "effects": "tracker.commands.metrics_cmds:effects",
    "check": "tracker.commands.check:check",
    "studio": "tracker.commands.studio:studio",
    "ratings": "tracker.commands.studio:ratings",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                return None  # a command whose module is not installed stays out of the listing
            raise
        return getattr(mod, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prompt-tracker")
@click.option("--home", envvar="TRACKER_HOME", metavar="DIR",
              help="WorkspaceConfig folder for the run store, images, MLflow store and reports [default: ./.tracker].")
@click.option("--db", "db_url", envvar="TRACKER_DB_URL", metavar="URL",
              help="SQLAlchemy URL of the run store [default: sqlite:///HOME/tracker.db].")
@click.pass_context
def cli(ctx: click.Context, home: str | None, db_url: str | None) -> None:
    """prompt-tracker: record, compare and reproduce text-to-image prompt experiments.

    \b
    Typical session:
      tracker expand examples/shapes.yaml   # see the plan
      tracker run examples/shapes.yaml      # generate, store, log to MLflow
      tracker report shapes                 # HTML report with seed-fixed grids
      tracker ui                            # browse runs in the MLflow UI
    """
    ctx.obj = WorkspaceConfig.from_options(home=home, db=db_url)


pass_workspace = click.make_pass_decorator(WorkspaceConfig)


def mlflow_uri_option(f):
    """``--mlflow-uri URI`` for commands that read MLflow (images of runs made elsewhere): sets the workspace's."""
    def set_uri(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            from dataclasses import replace

            ctx.obj = replace(ctx.find_object(WorkspaceConfig), mlflow_uri=value)

    return click.option("--mlflow-uri", metavar="URI", expose_value=False, callback=set_uri,
                        help="MLflow tracking URI, where images not in this workspace are read from "
                             "[default: MLFLOW_TRACKING_URI, else the workspace's store].")(f)


def _setup_logging() -> None:
    """Domain code logs warnings on the "tracker" logger; the CLI prints them as one ``warning:`` line each."""
    import logging

    class _Stderr(logging.StreamHandler):
        """Writes to the sys.stderr of the moment (not the one at setup), so main() can be called again
        after stderr was replaced (tests capturing output, embedding)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, value) -> None:
            pass

    logger = logging.getLogger("tracker")
    if not logger.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s".replace("%(levelname)s", "warning")))
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
        logger.propagate = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: a sweep resets its unfinished runs and ends ``interrupted``."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    import signal
    import threading

    _setup_logging()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="tracker", standalone_mode=False)
    except TrackerError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, Terminated):  # click turns KeyboardInterrupt into Abort
            click.echo("terminated", err=True)
            sys.exit(143)
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except Terminated:
        click.echo("terminated", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:  # a read-only folder, a full disk, a name too long: one line naming the path
        from tracker.fsutil import os_error_message

        click.echo(f"error: {os_error_message(e)}", err=True)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)
