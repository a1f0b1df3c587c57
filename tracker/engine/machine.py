"""What the engine measures of the process and the machine: the peak resident set size during a batch, the
CPU's name and the software versions (``_environment``; torch and diffusers imported there, when asked),
content hashes of model folders (with a cheap stat signature to reuse them, hashed in the background) and a
hub model's cached revision.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

RSS_SAMPLE_SECONDS = 0.005


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return psutil.Process().memory_info().rss


def _vm_hwm_bytes() -> int | None:
    """Linux's peak resident set size of this process (VmHWM), or None where /proc has no such line."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_vm_hwm() -> bool:
    """Writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm_hwm_bytes() is not None
    except OSError:
        return False


class _PeakRss:
    """The process's peak resident set size while a batch runs (``peak``).

    On Linux the kernel tracks it: VmHWM, reset before the batch. Elsewhere a thread samples the RSS every
    few ms. No thread where the kernel can do it: on a CPU a sampling thread wakes up against torch's
    OpenMP threads, which then wait for it at their barriers (measured ~10% slower at 2 threads on 2 cores).
    """

    def __init__(self, interval: float = RSS_SAMPLE_SECONDS):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "_PeakRss":
        self.peak = _rss_bytes()
        if not _reset_vm_hwm():
            self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes(), _vm_hwm_bytes() or 0)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _folder_hash(folder: Path) -> str:
    """sha256 over the relative paths and contents of every file under ``folder`` (hidden ones skipped)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        h.update(str(rel.as_posix()).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def _stat_signature(folder: Path) -> tuple:
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())


def _hub_revision(repo: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo, "model_index.json")
    except Exception:  # noqa: BLE001 - a malformed id has no revision
        return None
    return Path(path).parent.name if isinstance(path, str) else None


def _in_background(fn: Callable, *args: Any) -> Future:
    """``fn(*args)`` in a daemon thread (an exiting process never waits for it); its result as a Future."""
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever asks for the result
            fut.set_exception(e)

    threading.Thread(target=run, name="tracker-model-hash", daemon=True).start()
    return fut


@functools.lru_cache(maxsize=None)
def _environment(device: str) -> dict:
    """Static per process and device, so the runner may ask for it once per image."""
    import accelerate
    import diffusers
    import torch
    import transformers

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    elif device == "mps":
        name = "Apple MPS"
    else:
        name = _cpu_name()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "device": device,
        "device_name": name,
        "cuda": torch.version.cuda,
    }
