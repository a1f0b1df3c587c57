"""prompt-tracker: a prompt-engineering experiment tracker for diffusers pipelines.

The Python API (``tracker.api``), exported lazily so ``import tracker`` and ``tracker --help`` stay fast:

- ``tracker.Experiment``: ``.from_yaml(path)``, ``.from_dict(d)`` or keyword construction;
- ``tracker.run(experiment, *, pipeline=None, home=None, mlflow=True, progress=True) -> SweepResult``;
- ``tracker.open(home=None) -> Workspace``: ``.experiments()``, ``.runs(experiment, where=...)``,
  ``.run(key)``, ``.grid(...)``, ``.report(experiment)``, ``.reproduce(key)``;
- results: ``Run``, ``RunList`` (``.to_pandas()``), ``SweepResult``; errors: ``TrackerError``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tracker.version import __version__

# public name -> module that defines it (imported on first use)
_EXPORTS = {
    "Experiment": "tracker.api", "run": "tracker.api", "open": "tracker.api", "Workspace": "tracker.api",
    "Run": "tracker.results", "RunList": "tracker.results", "SweepResult": "tracker.results",
    "TrackerError": "tracker.errors", "SpecError": "tracker.errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from tracker.api import Experiment, Workspace, open, run
    from tracker.errors import SpecError, TrackerError
    from tracker.results import Run, RunList, SweepResult


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tracker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
