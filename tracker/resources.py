"""Data folders shipped beside the code: top-level in a checkout, inside the package in a wheel.

pyproject.toml force-includes ``templates/`` and ``migrations/`` as ``tracker/_templates`` and
``tracker/_migrations``; a checkout (or an editable install) reads the top-level folders.
"""

from __future__ import annotations

from pathlib import Path

from tracker.errors import TrackerError


def data_dir(name: str, marker: str, error: type[TrackerError] = TrackerError) -> Path:
    """The folder ``name`` that holds ``marker``; raises ``error`` saying where it looked."""
    here = Path(__file__).resolve().parent
    candidates = (here.parent / name, here / f"_{name}")
    for candidate in candidates:
        if (candidate / marker).is_file():
            return candidate
    raise error(f"the {name} folder is missing (looked in {candidates[0]} and {candidates[1]}); "
                f"reinstall prompt-tracker")
