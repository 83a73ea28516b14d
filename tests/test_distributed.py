"""Data parallelism changes nothing but summation order: every shipped coupling, step by step.

Two gloo processes each take their share of the same batches (the pipeline's
``batch[rank::world]``); after their steps their networks must equal those of one process
that took the whole batches. The batch has 5 subjects, so the shares are uneven (3 and 2)
and so are their numbers of subjects with PET: a mean over a process's own share, averaged
over processes, would differ from the batch's mean, which is what this guards against.
A stage that learns from unlabelled subjects (``TrainingStage.labels``) gets two of the
five unlabelled, so that its masked means over labelled subjects are uneven too; the
cross-fitted joint coupling's two halves are uneven as well (one process holds no subject
of half B, so its generator B has no local gradient there).
Group norm and instance norm are per-subject, so they normalise alike in both runs (batch
norm normalises per process under data parallelism; docs/scaling.md).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import training_context

from cdsf_bench import distributed
from cdsf_bench.interfaces import Batch, Coupling
from cdsf_bench.registry import default_registry

SHAPE = (16, 16, 16)
WORLD = 2
STEPS = 2
#: a rendezvous or collective that hangs fails the test instead of the CI job
TIMEOUT = timedelta(minutes=2)
#: every shipped coupling (a run's name: the coupling and the settings that exercise its
#: optional terms)
COUPLINGS: dict[str, tuple[str, dict]] = {
    "joint": ("joint", {"w_diag": 0.1, "w_adv": 1.0, "critic_widths": (4, 8)}),
    "joint-cross-fitted": (
        "joint",
        {"synthetic_pairs": "cross_fitted", "w_diag": 0.1, "w_adv": 1.0, "critic_widths": (4, 8)},
    ),
    "decoupled": ("decoupled", {"discriminator_widths": (4, 8)}),
    "task-induced": ("task-induced", {"discriminator_widths": (4, 8)}),
    "single": ("single", {}),
    "mean-impute": ("mean-impute", {}),
    "complete-case": ("complete-case", {}),
    "oracle": ("oracle", {}),
    "oracle-synthesis": ("oracle-synthesis", {}),
    "routing": ("routing", {}),
    "decoupled-cross-fitted": (
        "decoupled",
        {"synthetic_pairs": "cross_fitted", "discriminator_widths": (4, 8)},
    ),
    "joint-pet-indicator": ("joint", {"pet_indicator": True, "w_diag": 0.1, "critic_widths": (4, 8)}),
    "decoupled-pet-indicator": ("decoupled", {"pet_indicator": True, "discriminator_widths": (4, 8)}),
    "mean-impute-pet-indicator": ("mean-impute", {"pet_indicator": True}),
}


def _batch(with_pet_only: bool, unlabelled: bool) -> Batch:
    generator = torch.Generator().manual_seed(3)
    mri = torch.rand(5, 1, *SHAPE, generator=generator) * 2 - 1
    truth = torch.rand(5, 1, *SHAPE, generator=generator) * 2 - 1
    has_pet = torch.ones(5, dtype=torch.bool) if with_pet_only else torch.tensor([1, 0, 0, 1, 1]).bool()
    pet = torch.where(has_pet.view(-1, 1, 1, 1, 1), truth, torch.zeros_like(truth))
    labelled = torch.tensor([1, 0, 1, 1, 0] if unlabelled else [1] * 5).bool()
    label = torch.where(labelled, torch.tensor([0, 1, 1, 0, 1]), -1)
    expected = (
        torch.rand(5, 1, *SHAPE, generator=generator) * 2 - 1
    )  # E[PET | MRI]: oracle-synthesis reads it
    return Batch(mri, pet, has_pet, label, torch.arange(5), truth, labelled, pet_expected=expected)


def _coupling(name: str, cluster: distributed.Cluster) -> Coupling:
    registry = default_registry()
    torch.manual_seed(0)
    context = training_context(
        SHAPE, has_pet_truth=True, world=cluster.world, global_sum=distributed.global_sum(cluster)
    )
    synth = registry.get("synthesiser", "ism").factory
    diag = registry.get("diagnoser", "mdm").factory
    coupling_name, settings = COUPLINGS[name]
    coupling_class = registry.coupling_class(coupling_name)
    build_synth = None
    if coupling_class.needs_synthesiser:

        def build_synth() -> torch.nn.Module:
            return synth(widths=(2, 4, 4), n_residual=1, decoder_widths=(4, 2))

    def build_diag(in_channels: int, num_classes: int | None = None) -> torch.nn.Module:
        return diag(in_channels, SHAPE, num_classes or 2, widths=(4, 8, 8, 8, 16), norm="group")

    return coupling_class(context, build_synth, build_diag, **settings)


def _train(name: str, cluster: distributed.Cluster) -> dict[str, torch.Tensor]:
    coupling = _coupling(name, cluster)
    for stage in coupling.stages():
        for optimiser in stage.optimisers.values():
            # Adam divides by the root of each gradient's running square: a gradient near 0
            # turns a rounding difference into a step of either sign. With eps this large it
            # steps like SGD, so what is compared is the gradient, not Adam's sign of noise.
            for group in optimiser.param_groups:
                group["eps"] = 1.0
        distributed.synchronise(stage.modules, stage.optimisers, cluster)
        batch = _batch(with_pet_only=stage.subjects == "with_pet", unlabelled=stage.labels != "required")
        for _ in range(STEPS):
            stage.step(batch.take(slice(cluster.rank, None, cluster.world)))
    return {
        f"{module_name}.{key}": value.detach().clone()
        for module_name, module in coupling.modules().items()
        for key, value in module.state_dict().items()
    }


def _worker(rank: int, folder: str, port: int) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=TIMEOUT)
    try:
        cluster = distributed.Cluster(rank=rank, world=WORLD)
        for name in COUPLINGS:
            state = _train(name, cluster)
            if rank == 0:
                torch.save(state, Path(folder) / f"{name}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_states(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    # The parent serves the rendezvous on a port the OS picks and holds (port 0), as
    # torchrun --standalone does: no free port to race for. (A file store aborted a worker
    # in CI's sandbox; a port picked, closed and reopened could be taken in between.)
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    mp.start_processes(
        _worker, args=(str(folder), server.port), nprocs=WORLD, join=True, start_method="spawn"
    )
    return folder


@pytest.mark.parametrize("name", list(COUPLINGS))
def test_data_parallel_steps_equal_one_process(name: str, two_process_states: Path):
    one = _train(name, distributed.Cluster())
    two = torch.load(two_process_states / f"{name}.pt", weights_only=True)
    assert one.keys() == two.keys()
    moved = _coupling(name, distributed.Cluster())
    start = {f"{m}.{k}": v for m, module in moved.modules().items() for k, v in module.state_dict().items()}
    assert any(not torch.equal(start[key], one[key]) for key in one)  # the steps did learn
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), rtol=1e-5, atol=1e-7), key
