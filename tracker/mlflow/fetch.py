"""A done run's image, read from the workspace or, when it is not there, from MLflow's artifact store.

Team mode puts images in a shared ``--home`` folder or in the artifact store of a tracking server
(``--mlflow-uri http://...``): a machine whose workspace lacks a run's PNG (another machine made it) reads
it back from the MLflow run the sink logged it to (``runs.mlflow_run_id``, artifact ``<key>.png``) with
MLflow's own client (``MlflowClient.download_artifacts``). ``tracker report``, ``tracker grid``,
``tracker reproduce`` and ``tracker verify`` all go through ``Images.locate``.

- Fetched images go to a cache inside the workspace (``HOME/cache/mlflow-images``), named by their sha256,
  never by anything the server says: no name leaves the workspace.
- An image is used only when its sha256 equals the run store's: a mismatch is reported (the cell, the
  reproduce or the verify row says so) and the file is removed, never shown. Cached files are checked
  again on every use.
- The cache is bounded (``TRACKER_IMAGE_CACHE_MB``, default 1024): after each fetch the least recently
  used images go, except those used in the last minute (a report may still be linking them).
- An outage (server down) is found once; the other images are then reported missing without trying.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracker.fsutil import sha256_file
from tracker.workspace import WorkspaceConfig

if TYPE_CHECKING:
    from tracker.store.records import RunRecord

CACHE_ENV = "TRACKER_IMAGE_CACHE_MB"
DEFAULT_CACHE_MB = 1024
KEEP_RECENT_S = 60.0  # a cached image used this recently is never evicted (a report may still link it)


@dataclass(frozen=True)
class Found:
    """Where a run's image can be read (``path``, from ``origin`` "workspace" or "mlflow"), or why not."""

    path: Path | None
    origin: str = ""
    problem: str | None = None
    state: str | None = None  # tracker.images.check's "missing" or "modified" (the local file); "modified" with a path:
    # an edited original handed back on purpose (``modified_ok``)

    def __bool__(self) -> bool:
        return self.path is not None


def _is_sha256(text: str | None) -> bool:
    return bool(text) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def cache_bytes() -> int:
    try:
        mb = float(os.environ.get(CACHE_ENV, DEFAULT_CACHE_MB))
    except ValueError:
        mb = DEFAULT_CACHE_MB
    return max(0, int(mb * 1024 * 1024))


def in_workspace(rec: "RunRecord", modified_ok: bool = False) -> Found:
    """The run's image file here when it has the bytes the sweep recorded (``tracker.images.check.image_state``: one
    stat, a hash only when the stat changed), else why not (state "missing" or "modified"). ``modified_ok``:
    an edited file is handed back too (verify and reproduce measure how far its pixels moved)."""
    from tracker.images.check import MODIFIED, image_state

    state = image_state(rec)
    if state is None or state == MODIFIED and modified_ok:
        return Found(Path(rec.image), "workspace", state=state)
    name = Path(rec.image).name if rec.image else "no file recorded"
    what = "image modified since it was made" if state == MODIFIED else "image missing"
    return Found(None, problem=f"{what}: {name}", state=state)


class Images:
    """Finds done runs' images: the workspace first, then (when MLflow is on) the tracking server's artifacts.

    Thread-safe: the report locates images from its thumbnail threads.
    """

    def __init__(self, ws: WorkspaceConfig, limit_bytes: int | None = None):
        self.ws = ws
        self.uri = ws.mlflow_tracking_uri if ws.mlflow_enabled else None
        self.cache = ws.home / "cache" / "mlflow-images"
        self.limit = cache_bytes() if limit_bytes is None else limit_bytes
        self.fetched = 0  # images downloaded from MLflow by this object
        self.mismatched: list[str] = []  # keys whose MLflow image did not match the store's sha256
        self._lock = threading.Lock()
        self._client = None
        self._down: str | None = None  # the first outage: later images are not tried

    # -- the one entry point

    def locate(self, rec: "RunRecord", modified_ok: bool = False) -> Found:
        """The image of a done run: its workspace file when it has the bytes the sweep recorded (one stat, a
        hash only when the stat changed), else (the file is missing) a checked copy from MLflow, else why not.
        A record's ``image`` is the resolved path (``Store.open(url, home=...)``); ``modified_ok``: as in
        ``in_workspace``."""
        from tracker.images.check import MISSING

        here = in_workspace(rec, modified_ok)
        if here.state != MISSING:  # there, or edited here: neither shown nor replaced behind the user's back
            return here
        missing = here.problem
        if self.uri is None or not rec.mlflow_run_id or not _is_sha256(rec.image_sha256):
            return Found(None, problem=missing, state=MISSING)
        cached = self._cached(rec.image_sha256)
        if cached is not None:
            return Found(cached, "mlflow")
        if self._down is not None:
            return Found(None, problem=f"{missing} (MLflow at {self.uri} failed: {self._down})", state=MISSING)
        return self._fetch(rec, missing)

    def note(self) -> str | None:
        """One line for the command's output: what came from MLflow and what did not match."""
        parts = []
        if self.fetched:
            parts.append(f"read {self.fetched} image{'s' * (self.fetched != 1)} from MLflow at {self.uri} "
                         f"(cache: {self.cache})")
        if self.mismatched:
            n = len(self.mismatched)
            parts.append(f"{n} image{'s' * (n != 1)} in MLflow did not match the run store's sha256 and "
                         f"{'were' if n != 1 else 'was'} not used ({', '.join(self.mismatched[:3])}"
                         f"{' ...' if n > 3 else ''})")
        if self._down is not None:
            parts.append(f"MLflow at {self.uri} failed ({self._down}); images not in this workspace are missing")
        return "; ".join(parts) or None

    # -- the cache

    def _cached(self, sha: str) -> Path | None:
        path = self._cache_path(sha)
        if not path.is_file():
            return None
        if sha256_file(path) != sha:  # changed since it was checked: the tracker wrote it, so it may go
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return path

    def _cache_path(self, sha: str) -> Path:
        if not _is_sha256(sha):
            raise ValueError(f"not a sha256: {sha!r}")
        return self.cache / f"{sha}.png"  # 64 hex digits: a plain name inside the cache folder

    def _evict(self, keep: Path) -> None:
        """Least recently used first, down to the bound; never ``keep`` nor images used in the last minute."""
        with self._lock:
            files = []
            for p in self.cache.glob("*.png"):
                try:
                    st = p.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in files)
            recent = time.time() - KEEP_RECENT_S
            for mtime, size, p in sorted(files):
                if total <= self.limit:
                    break
                if p == keep or mtime > recent:
                    continue
                p.unlink(missing_ok=True)
                total -= size

    # -- MLflow

    def _connect(self):
        with self._lock:
            if self._client is None:
                from tracker.mlflow.client import connect

                self._client = connect(self.uri)
            return self._client

    def _fetch(self, rec: "RunRecord", missing: str) -> Found:
        from tracker.images.check import MISSING
        from tracker.mlflow.client import is_outage, short_error

        name = Path(rec.image).name if rec.image else f"{rec.key}.png"  # the sink logs the PNG under its file name
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache, prefix=".fetch-"))
        try:
            try:
                got = Path(self._connect().download_artifacts(rec.mlflow_run_id, name, str(tmp))).resolve()
            except Exception as e:  # noqa: BLE001 -- the server, or this run's artifact, is not there
                if is_outage(e):
                    with self._lock:
                        self._down = self._down or short_error(e)
                return Found(None, problem=f"{missing} (not read from MLflow run {rec.mlflow_run_id} at {self.uri}: "
                                           f"{short_error(e)})", state=MISSING)
            if tmp.resolve() not in got.parents or got.is_symlink() or not got.is_file():
                return Found(None, problem=f"{missing} (MLflow run {rec.mlflow_run_id} has no file {name})",
                             state=MISSING)
            sha = sha256_file(got)
            if sha != rec.image_sha256:
                with self._lock:
                    self.mismatched.append(rec.key)
                return Found(None, problem=f"{missing}; the copy in MLflow run {rec.mlflow_run_id} at {self.uri} was "
                                           f"not used: its sha256 {sha[:12]}... is not the run store's "
                                           f"{rec.image_sha256[:12]}...", state=MISSING)
            final = self._cache_path(sha)
            os.replace(got, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        with self._lock:
            self.fetched += 1
        self._evict(keep=final)
        return Found(final, "mlflow")
