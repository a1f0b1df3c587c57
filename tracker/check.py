"""``tracker check``: is every done run's image still there, with the bytes its sha256 recorded?

A deleted image is "missing", an edited one "modified" (the report would publish it under its old hash,
``reproduce`` would compare with it). ``fix`` marks such runs pending, so the next ``tracker run`` makes
them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker.fsutil import sha256_file


@dataclass(frozen=True)
class Problem:
    experiment: str
    key: str
    image: str | None
    kind: str  # "missing" | "modified"


def check(store: Any, experiment: str | None = None) -> tuple[int, list[Problem]]:
    """(done runs checked, problems) for one experiment or all."""
    done = store.runs(experiment, status="done")
    problems = []
    for r in done:
        path = Path(r.image) if r.image else None
        if path is None or not path.is_file():
            problems.append(Problem(r.experiment, r.key, r.image, "missing"))
        elif r.image_sha256 and sha256_file(path) != r.image_sha256:
            problems.append(Problem(r.experiment, r.key, r.image, "modified"))
    return len(done), problems


def fix(store: Any, problems: list[Problem]) -> None:
    """Mark the runs pending: the next ``tracker run`` of their experiment generates them again."""
    by_experiment: dict[str, list[str]] = {}
    for p in problems:
        by_experiment.setdefault(p.experiment, []).append(p.key)
    for experiment, keys in by_experiment.items():
        store.mark_pending(experiment, keys)
