"""``tracker check``: is every done run's image still there, with the bytes its sha256 recorded?

A deleted image is "missing", an edited one "modified" (the report would publish it under its old hash,
``reproduce`` would compare with it). ``fix`` marks such runs pending, so the next ``tracker run`` makes
them again.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker.fsutil import sha256_file

MISSING, MODIFIED = "missing", "modified"


@dataclass(frozen=True)
class Problem:
    experiment: str
    key: str
    image: str | None
    kind: str  # "missing" | "modified"


def image_stat(path: str | Path) -> dict[str, int]:
    """What a sweep records of the image file it just wrote (``mark_done`` fields) for ``image_state``."""
    st = os.stat(path)
    return {"image_size": st.st_size, "image_mtime_ns": st.st_mtime_ns}


def image_state(record: Any, trust_stat: bool = True) -> str | None:
    """None when the done run's image is there with the bytes it was made with, else MISSING or MODIFIED.

    ``trust_stat`` (the report): a file whose size and mtime are still those recorded when the sweep wrote it
    is taken as unchanged (one stat); any other file is hashed and compared with the recorded sha256. Without
    it (``tracker check``) every file is hashed.
    """
    path = Path(record.image) if record.image else None
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        return MISSING
    if not record.image_sha256:
        return None  # nothing recorded to compare with
    if trust_stat and (record.image_size, record.image_mtime_ns) == (st.st_size, st.st_mtime_ns):
        return None
    return None if sha256_file(path) == record.image_sha256 else MODIFIED


def check(store: Any, experiment: str | None = None) -> tuple[int, list[Problem]]:
    """(done runs checked, problems) for one experiment or all; every image is hashed."""
    done = store.runs(experiment, status="done")
    problems = []
    for r in done:
        kind = image_state(r, trust_stat=False)
        if kind is not None:
            problems.append(Problem(r.experiment, r.key, r.image, kind))
    return len(done), problems


def fix(store: Any, problems: list[Problem]) -> None:
    """Mark the runs pending: the next ``tracker run`` of their experiment generates them again."""
    by_experiment: dict[str, list[str]] = {}
    for p in problems:
        by_experiment.setdefault(p.experiment, []).append(p.key)
    for experiment, keys in by_experiment.items():
        store.mark_pending(experiment, keys)
