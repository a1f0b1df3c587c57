"""``tracker check``: is every done run's image still there, with the bytes its sha256 recorded?

A deleted image is "missing", an edited one "modified" (the report would publish it under its old hash,
``reproduce`` would compare with it). ``fix`` marks such runs pending, so the next ``tracker run`` makes
them again. An image whose hash matches but whose size/mtime differ from what was recorded (a store from
before schema 0008, a workspace copied without keeping mtimes) gets its stat recorded again, so the
report only stats it from then on.
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
    return _examine(record, trust_stat)[0]


def _examine(record: Any, trust_stat: bool) -> tuple[str | None, os.stat_result | None]:
    """(image_state, the stat it judged)."""
    path = Path(record.image) if record.image else None
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        return MISSING, None
    if not record.image_sha256:
        return None, st  # nothing recorded to compare with
    if trust_stat and _recorded(record) == (st.st_size, st.st_mtime_ns):
        return None, st
    return (None if sha256_file(path) == record.image_sha256 else MODIFIED), st


def _recorded(record: Any) -> tuple[int | None, int | None]:
    return record.image_size, record.image_mtime_ns


def check(store: Any, experiment: str | None = None) -> tuple[int, list[Problem]]:
    """(done runs checked, problems) for one experiment or all; every image is hashed. Images that match but
    whose stat changed since it was recorded get it recorded again (``Store.restamp_images``)."""
    done = store.runs(experiment, status="done")
    problems, restamp = [], []
    for r in done:
        kind, st = _examine(r, trust_stat=False)
        if kind is not None:
            problems.append(Problem(r.experiment, r.key, r.image, kind))
        elif st is not None and r.image_sha256 and _recorded(r) != (st.st_size, st.st_mtime_ns):
            again = os.stat(r.image)  # unchanged while it was hashed
            if (again.st_size, again.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                restamp.append((r.experiment, r.key, r.image_sha256, st.st_size, st.st_mtime_ns))
    if restamp:
        store.restamp_images(restamp)
    return len(done), problems


def fix(store: Any, problems: list[Problem]) -> None:
    """Mark the runs pending: the next ``tracker run`` of their experiment generates them again."""
    by_experiment: dict[str, list[str]] = {}
    for p in problems:
        by_experiment.setdefault(p.experiment, []).append(p.key)
    for experiment, keys in by_experiment.items():
        store.mark_pending(experiment, keys)
