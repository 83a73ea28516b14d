"""Data-parallel training with torch.distributed, launched by torchrun (one node or many).

Each process holds the cohort, draws the same global batch and trains on its share of it
(``batch[rank::world]``); gradients are averaged over processes before every optimiser
step, so all processes keep identical weights, as under DistributedDataParallel. The
averaging is attached to the optimisers (a step pre-hook) rather than to wrapped modules:
couplings run several forward passes per step, freeze one network while another learns
and read attributes of their modules, all of which a DDP wrapper makes fragile, while an
optimiser hook sees exactly the gradients that are about to be applied. Evaluation is
sharded the same way and the per-subject records are gathered, keyed by the subject's
row, so no subject is counted twice. Only rank 0 writes files and shows progress.

Backends: gloo on CPU, nccl on CUDA (each process on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (a single process by default)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE_PROCESS = Cluster()


def from_environment() -> Cluster:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a plain process is a cluster of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Cluster()
    return Cluster(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(cluster: Cluster, device: torch.device) -> torch.device:
    """Join the process group; return this process's device (its own GPU under CUDA)."""
    if not cluster.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop(cluster: Cluster) -> None:
    if cluster.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(cluster: Cluster) -> None:
    if cluster.active:
        dist.barrier()


def broadcast_object(value: Any, cluster: Cluster) -> Any:
    """Rank 0's ``value`` on every process (a run folder's path, say)."""
    if not cluster.active:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def average_scalars(values: dict[str, float], cluster: Cluster) -> dict[str, float]:
    """The mean of each named value over processes (losses for the history)."""
    if not cluster.active or not values:
        return values
    keys = sorted(values)
    # nccl reduces CUDA tensors only, gloo host ones
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) / cluster.world for k, v in zip(keys, tensor.tolist(), strict=True)}


def global_sum(cluster: Cluster) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function summing a tensor over processes (``TrainingContext.global_sum``)."""
    if not cluster.active:
        return lambda tensor: tensor

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    return reduce


def gather_records(records: list[dict], cluster: Cluster) -> list[dict]:
    """Every process's records, concatenated in rank order."""
    if not cluster.active:
        return records
    parts: list[list[dict] | None] = [None] * cluster.world
    dist.all_gather_object(parts, records)
    return [record for part in parts for record in (part or [])]


def synchronise(
    modules: dict[str, torch.nn.Module], optimisers: dict[str, torch.optim.Optimizer], cluster: Cluster
) -> None:
    """Start every process from rank 0's weights and average gradients before each step."""
    if not cluster.active:
        return
    for module in modules.values():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)
    for optimiser in optimisers.values():
        if not getattr(optimiser, "_cdsf_bench_averaged", False):
            optimiser.register_step_pre_hook(_average_gradients(cluster))
            optimiser._cdsf_bench_averaged = True  # type: ignore[attr-defined]


def _average_gradients(cluster: Cluster) -> Callable[[torch.optim.Optimizer, Any, Any], None]:
    """A step pre-hook that averages gradients over processes.

    A parameter that has no gradient on any process keeps none (the optimiser then skips
    it, as it would in one process); one that has a gradient somewhere gets zeros where
    it has none, so the average is over the whole global batch. Couplings must therefore
    call ``step()`` on every process, even when their local loss had nothing to learn from.
    """

    def hook(optimiser: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        parameters = [p for group in optimiser.param_groups for p in group["params"]]
        if not parameters:
            return
        present = torch.tensor(
            [p.grad is not None for p in parameters], dtype=torch.float32, device=parameters[0].device
        )
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
        for parameter, anywhere in zip(parameters, present.tolist(), strict=True):
            if not anywhere:
                continue
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(cluster.world)

    return hook
