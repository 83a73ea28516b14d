"""The parts ``cdsf-bench perf`` times: networks alone, the coupling's stages, reference matmuls.

Each builder returns a :class:`~cdsf_bench.perf.harness.Part` ready to prepare, so that
``measure`` only decides which parts exist and in which order they are timed. Steps run
under the run's precision (bf16 autocast from ``interfaces.bf16_autocast``, float32 losses)
so a part times what training does, not a simplified version of it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Coupling, TrainingStage, bf16_autocast
from cdsf_bench.perf.cohort import typical_batches
from cdsf_bench.perf.harness import Part, Timing

#: side of the square matrices of the reference multiply (large enough to be compute-bound)
MATMUL_SIDE = 2048


def layout(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``tensor`` in the memory format a run's batches have (NDHWC when ``channels_last``)."""
    return tensor.contiguous(
        memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format
    )


def param_dtypes(modules: list[nn.Module]) -> list[str]:
    """The parameters' dtypes, observed: fp32 master weights are checked, not assumed."""
    return sorted({str(p.dtype).removeprefix("torch.") for m in modules for p in m.parameters()})


def synth_step(
    module: nn.Module, mri: torch.Tensor, target: torch.Tensor, mixed: bool, device: torch.device
) -> Callable[[], None]:
    """Forward and backward of an L1 loss on the synthesiser; the loss in float32."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        with bf16_autocast(device, mixed):
            output = module(mri)
        F.l1_loss(output.float(), target).backward()

    return step


def diag_step(
    module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, mixed: bool, device: torch.device
) -> Callable[[], None]:
    """Forward and backward of a cross-entropy on the diagnoser's logits, in float32."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        with bf16_autocast(device, mixed):
            output = module(inputs)
        logits = output.logits if hasattr(output, "logits") else output
        F.cross_entropy(logits.float(), labels).backward()

    return step


def _layout_of(tensor: torch.Tensor) -> str:
    """``channels_last``, ``contiguous``, ``either`` (a 1-voxel map fits both) or ``other``."""
    plain = tensor.is_contiguous()
    last = tensor.is_contiguous(memory_format=torch.channels_last_3d)
    if plain and last:
        return "either"
    return "contiguous" if plain else "channels_last" if last else "other"


def layout_census(
    module: nn.Module, inputs: torch.Tensor, device: torch.device, mixed: bool
) -> tuple[dict[str, int], Any]:
    """How many layer outputs of one forward pass are in each memory layout, and the output.

    Only 5D maps with more than one channel are counted (with one channel both layouts are
    the same strides). Under channels_last_3d every ``contiguous`` or ``other`` count is a
    layer whose output left NDHWC, so the next layer pays a layout conversion.
    """
    counts = {"channels_last": 0, "contiguous": 0, "either": 0, "other": 0}

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 5 and output.shape[1] > 1:
            counts[_layout_of(output)] += 1

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [leaf.register_forward_hook(hook) for leaf in leaves]
    try:
        with torch.no_grad(), bf16_autocast(device, mixed):
            output = module(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return counts, output


def matmul_part(dtype: torch.dtype, device: torch.device, side: int = MATMUL_SIDE) -> Part:
    """A ``side`` x ``side`` matrix multiply in ``dtype``: the device's practical peak rate.

    A square multiply this large is compute-bound and runs in the vendor library's best
    kernel (oneDNN/MKL on CPU, cuBLAS on GPU), so its rate is what convolutions could reach
    at best in that dtype on the same cores, under the same background load.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(side, side, generator=generator).to(device=device, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    part = Part(f"{name}_matmul", partial(torch.mm, a, b), 1, {"dtype": name, "side": side}, count=False)
    part.flops = 2.0 * side**3
    return part


def matmul_summary(part: Part) -> dict[str, Any]:
    """A matmul part's median time and rate, and its best rate (the least disturbed call)."""
    timing = Timing(part.seconds)
    flops = part.flops or 0.0
    return {
        **part.record,
        "median_s": timing.median,
        "gflop_per_s": flops / timing.median / 1e9,
        "best_gflop_per_s": flops / min(timing.seconds) / 1e9,
    }


def coupling_parts(
    coupling: Coupling,
    pipeline: Any,
    device: torch.device,
    size: tuple[int, ...],
    batch: int,
    warmup: int,
    counting: Coupling | None = None,
) -> list[Part]:
    """One part per stage, each on a typical batch; the first stage's figures are the headline.

    ``counting`` is the same method built plain; its stages' steps on the same batches give
    the FLOP counts.
    """
    modules = [value for value in vars(coupling).values() if isinstance(value, nn.Module)]
    stages = coupling.stages()
    counting_stages = stages if counting is None else counting.stages()
    parts: list[Part] = []
    for stage, counting_stage in zip(stages, counting_stages, strict=True):
        for module in [*stage.modules.values(), *counting_stage.modules.values()]:
            module.train()
        chosen, refused = _stage_part(
            stage, None if counting is None else counting_stage, pipeline, device, warmup
        )
        if chosen is None:
            raise InputError(
                f"Stage '{stage.name}' cannot train on any batch of size {batch} at "
                f"{'x'.join(map(str, size))}: {refused[0]}. Use a larger --size or --batch."
            )
        chosen.record["batches_refused"] = refused
        chosen.modules = modules
        chosen.record["param_dtypes"] = param_dtypes(list(stage.modules.values()))
        parts.append(chosen)
    return parts


def _stage_part(
    stage: TrainingStage,
    counting_stage: TrainingStage | None,
    pipeline: Any,
    device: torch.device,
    warmup: int,
) -> tuple[Part | None, list[str]]:
    """The stage's step on the most typical batch it can train on, and why others would not do.

    The typical batch is the one whose share of subjects with PET is closest to half. On
    very small volumes a batch whose PET subset is a single subject can leave batch norm
    one value per channel, which training refuses (ValueError); the next closest batch is
    then used, and ``batch_with_pet`` and ``batches_refused`` say so.
    """
    refused: list[str] = []
    for batch in typical_batches(list(pipeline.train_batches(0, stage.subjects, stage.labels))):
        part = Part(
            f"coupling:{stage.name}",
            partial(stage.step, batch),
            len(batch),
            {
                "stage": stage.name,
                "batch_subjects": len(batch),
                "batch_with_pet": int(batch.has_pet.sum()),
            },
            count_with=None if counting_stage is None else partial(counting_stage.step, batch),
        )
        try:
            part.prepare(device, warmup)
        except ValueError as error:
            refused.append(f"{int(batch.has_pet.sum())} of {len(batch)} with PET: {error}")
            continue
        return part, refused
    return None, refused
