"""``accelerate launch ... -m tracker run FILE``: each process of the launch is one worker.

The diffusers "Distributed inference" way: ``accelerate launch`` starts the processes and
``accelerate.PartialState`` tells each its rank and device. We do not split the plan with
``split_between_processes``: every rank takes batch-sized groups from the run store's claims like any
worker, so a rank that dies mid-sweep leaves its runs to the others and ranks finish together.

Found on a CPU (accelerate 1.15): ``accelerate launch --cpu --num_processes 2`` starts one process;
``--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no`` starts two,
and ``PartialState(cpu=True)`` then makes a gloo process group (without ``cpu=True`` on a machine
without CUDA each process thinks it is alone). accelerate sets ``OMP_NUM_THREADS`` to 1 per process
unless it is set. Only rank 0 logs to MLflow: it submits the runs the other ranks finished too.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Rank:
    index: int
    count: int
    device: str
    is_main: bool
    name: str


def launched() -> bool:
    """Started by ``accelerate launch`` (or torchrun) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ
    except ValueError:
        return False


def rank(device: str | None) -> Rank:
    """This process's rank and device; CUDA when there is some, else the CPU (``cpu=True``)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available() or (device or "").startswith("cpu"))
    dev = device if device and device != "cuda" else str(state.device)
    return Rank(state.process_index, state.num_processes, dev, state.is_main_process,
                f"{socket.gethostname()}:rank{state.process_index}:{dev}")
