"""Warm workers on a Ray cluster: ``tracker run FILE --ray ADDRESS`` and ``tracker worker --ray ADDRESS``.

Each warm worker is a detached Ray actor (``lifetime="detached"``: it outlives the command that started it),
one per GPU of the cluster, or one per CPU slot when it has none (``num_cpus=1``, spread over the nodes).
The actor runs the claim loop of ``tracker worker`` (``daemon.Daemon``) in a thread against the workspace's
run store, so the queue stays the run store: ``tracker run FILE --ray ADDRESS`` starts the actors that are
missing, then submits its plan to the store (``queue.submit``) and follows it as it follows any warm worker;
the actors claim batch-sized groups with leases and heartbeats, write the images, the PNG recipes, metrics
and MLflow, and keep their pipelines loaded for the next sweep. An actor whose node goes away stops
heartbeating: its claims expire and the other actors take them. After ``idle_timeout`` seconds without work
an actor stops and ends itself.

Actors are named per workspace (``tracker-warm-<id>-<i>``, the id derived from the run store's URL and the
workspace folder) in the ``prompt-tracker`` namespace, so every command of one workspace finds the same
ones (``ray list actors`` shows them; ``tracker status`` lists them as warm workers ``ray:...``).

The actors import prompt-tracker and open the run store and workspace folder by the paths the starting
command had: on a cluster of several machines install prompt-tracker on every node and use a store all
reach (``--db postgresql+psycopg://...``) and a workspace folder shared by the nodes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from tracker.errors import TrackerError
from tracker.sweep.ray_cluster import import_ray
from tracker.workspace import WorkspaceConfig

NAMESPACE = "prompt-tracker"
DEFAULT_IDLE_SECONDS = 600.0  # an actor started by `tracker run --ray ADDRESS` ends after this long without work
START_SECONDS = 600.0  # how long a starting actor may take to import torch and register in the store


def workspace_id(ws: WorkspaceConfig) -> str:
    """The workspace's identity in actor names: its run store (password hidden) and its folder."""
    from tracker.store.db import display_url

    return hashlib.sha256(f"{display_url(ws.db_url)}\n{ws.home}".encode()).hexdigest()[:12]


def actor_name(ws: WorkspaceConfig, index: int) -> str:
    return f"tracker-warm-{workspace_id(ws)}-{index}"


class WarmActor:
    """The detached actor: a warm worker (``daemon.Daemon``) serving the run store in a thread of its own, so
    that ``info`` and ``stop`` answer while it generates. It ends itself once the worker stops."""

    def __init__(self, config: dict):
        import ray

        from tracker.sweep.daemon import Daemon

        ws = WorkspaceConfig(home=Path(config["home"]), db_url=config["db_url"], mlflow_uri=config["mlflow_uri"],
                             mlflow_enabled=config["mlflow_enabled"])
        node = ray.get_runtime_context().get_node_id()
        self.where = {"actor": config["actor"], "host": socket.gethostname(), "pid": os.getpid(), "node": node,
                      "device": config["device"]}
        self.error: str | None = None
        self.finished = threading.Event()
        self.daemon = Daemon(ws, device=config["device"], experiments=config["experiments"],
                             max_memory=config["max_memory"], idle_timeout=config["idle_timeout"],
                             name=f"ray:{config['actor']}@{socket.gethostname()}:{node[:8]}")
        threading.Thread(target=self._serve, args=(config["threads"],), name="warm-worker", daemon=True).start()

    def _serve(self, threads: int | None) -> None:
        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            self.daemon.run()
        except BaseException as e:  # noqa: BLE001 - reported by info(); the actor ends below
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.finished.set()
            self._end()

    def _end(self) -> None:
        """The worker stopped (idle timeout, stop(), an error): the detached actor goes too, freeing its slot."""
        import ray

        time.sleep(0.5)  # let a waiting info() call return first
        try:
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        except Exception:  # noqa: BLE001 - out of the actor's hands: end the process
            os._exit(0)

    def info(self, wait: float = 0.0) -> dict:
        """Where it runs and its warm worker's id in the store; waits up to ``wait`` s for it to register."""
        deadline = time.monotonic() + wait
        while self.daemon.worker is None and not self.finished.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        w = self.daemon.worker
        return {**self.where, "worker_id": w.id if w else None, "worker": w.name if w else None,
                "stopped": self.finished.is_set(), "error": self.error, "made": self.daemon.done}

    def stop(self) -> None:
        self.daemon.stop()


def _connect(ray, address: str) -> bool:
    """Join the cluster at ``address`` as a driver; True when this call connected (and must disconnect)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except Exception as e:  # no cluster at that address, a version mismatch ...
        raise TrackerError(f"--ray {address}: cannot join the Ray cluster: {e}") from None
    return True


def _slots(ray, n: int | None, device: str | None) -> tuple[int, dict, str, int | None]:
    """How many actors, their Ray resources, their device and torch threads: one per GPU of the cluster (or
    ``n``), else one per CPU slot, one thread each."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if not gpus and (device or "").startswith("cuda"):
        raise TrackerError(f"--device {device}: the Ray cluster has no GPU (leave --device out for its CPUs)")
    if gpus and device in (None, "cuda", "auto") or (device or "").startswith("cuda"):
        return n or max(1, gpus), {"num_gpus": 1, "num_cpus": 0}, "cuda", None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return n or max(1, cpus), {"num_cpus": 1}, device or "cpu", 1


def start(ws: WorkspaceConfig, address: str, n: int | None = None, device: str | None = None,
          experiments: Sequence[str] = (), max_memory: int | None = None,
          idle_timeout: float | None = DEFAULT_IDLE_SECONDS, note: Callable[[str], None] | None = None) -> list[dict]:
    """Make sure the workspace's warm actors run on the cluster at ``address``: reuse the live ones, start the
    missing ones (detached), and wait until each has registered as a warm worker in the run store. Returns
    each actor's ``info`` with ``started`` (True: started by this call)."""
    ray = import_ray()
    ws.ensure()
    connected = _connect(ray, address)
    try:
        count, resources, dev, threads = _slots(ray, n, device)
        config = {"home": str(ws.home), "db_url": ws.db_url, "mlflow_uri": ws.mlflow_uri,
                  "mlflow_enabled": ws.mlflow_enabled, "device": dev, "threads": threads,
                  "experiments": list(experiments), "max_memory": max_memory, "idle_timeout": idle_timeout}
        cls = ray.remote(WarmActor)
        out = []
        for i in range(count):
            out.append(_one(ray, cls, actor_name(ws, i), resources, config))
        for info in out:
            if note is not None:
                state = "started" if info["started"] else "warm, reused"
                note(f"warm actor {info['actor']} on node {info['node'][:8]} ({info['host']}, {info['device']}): "
                     f"{state}; worker {info['worker']} (id {info['worker_id']})")
        return out
    finally:
        if connected:
            ray.shutdown()  # the detached actors stay


def _one(ray, cls, name: str, resources: dict, config: dict) -> dict:
    """The actor called ``name``: the live one, else a new one; its info once its worker registered."""
    for _ in range(3):
        started = False
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            _wait_room(ray, name, resources)
            handle = cls.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                                 scheduling_strategy="SPREAD", **resources).remote({**config, "actor": name})
            started = True
        try:
            info = ray.get(handle.info.remote(START_SECONDS), timeout=START_SECONDS + 60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            _wait_gone(ray, name)  # ending (idle timeout) or dead: start it again
            continue
        if info["error"] and started:
            raise TrackerError(f"the warm actor {name} could not start its worker: {info['error']}")
        if info["stopped"] or info["worker_id"] is None:
            _wait_gone(ray, name)
            continue
        return {**info, "started": started}
    raise TrackerError(f"the warm actor {name} did not start (see its log: `ray logs actor --name {name}`)")


def _wait_room(ray, name: str, resources: dict, seconds: float = 10.0) -> None:
    """Wait until the cluster has the GPU or CPU slot a new actor needs (one that just ended frees its own a
    moment later); a clear error instead of an actor that waits for a slot forever."""
    want = {"GPU" if k == "num_gpus" else "CPU": v for k, v in resources.items() if v}
    deadline = time.monotonic() + seconds
    while True:
        free = ray.available_resources()
        if all(free.get(k, 0) >= v for k, v in want.items()):
            return
        if time.monotonic() > deadline:
            total = ray.cluster_resources()
            what = ", ".join(f"{k} {free.get(k, 0):g} free of {total.get(k, 0):g}" for k in want)
            raise TrackerError(f"the Ray cluster has no room for the warm actor {name} ({what}; other actors or "
                               f"jobs hold the rest): ask for fewer with --workers N (tracker worker: --actors N)")
        time.sleep(0.5)


def _wait_gone(ray, name: str) -> None:
    """Kill the actor called ``name`` if it is still there and wait until its name is free."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        ray.kill(handle, no_restart=True)
        time.sleep(0.3)


def stop(ws: WorkspaceConfig, address: str) -> list[str]:
    """Ask the workspace's warm actors on the cluster to stop (each finishes its batch, drains its sweeps and
    ends itself); returns their names."""
    ray = import_ray()
    connected = _connect(ray, address)
    try:
        prefix = f"tracker-warm-{workspace_id(ws)}-"
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a.get("namespace") == NAMESPACE and a["name"].startswith(prefix))
        for name in names:
            try:
                ray.get(ray.get_actor(name, namespace=NAMESPACE).stop.remote(), timeout=60)
            except (ValueError, ray.exceptions.RayActorError):
                pass  # gone already
        return names
    finally:
        if connected:
            ray.shutdown()
