"""Pieces shared by the couplings of the built-in plugins (CDSF's joint one and the baselines).

Every coupling ends in the same place: a diagnoser D that reads the MRI x, stacked with a
PET channel p when it has one, and turns its logits into P(positive class). What differs
between methods is where p comes from for each subject (real PET, synthetic PET G(x), the
training mean, nothing) and how the networks are trained. Keeping the shared arithmetic
here means that every method predicts, reports its PET source and fills its training
stage in exactly the same way, so differences between methods are differences of method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from cdsf_bench import Batch, TrainingContext, TrainingStage
from cdsf_bench.interfaces import DiagnoserOutput, PetSource

#: which PET a coupling with a synthesiser predicts with, for subjects whose PET is real
PREDICT_WITH = ("real", "synthetic")


def check_choice(setting: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise say which values are."""
    if value not in allowed:
        raise ValueError(f"{setting} must be one of {allowed}, got {value!r}")
    return value


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of per-subject ``values`` over ``mask``; zero (and no gradient) when none is set."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def positive_probability(logits: Tensor, head: str = "class") -> Tensor:
    """P(positive class) from logits, in float32.

    With ``head = "class"`` the logits index the classes (negative, positive). With
    ``head = "class_source"`` (CDSF's AC-GAN-like reading) they index (class, source) as
    ``2 * class + source``, and the class probability marginalises the source:
    P(positive) = P(positive, real) + P(positive, synthetic).
    """
    probability = logits.float().softmax(dim=1)
    if head == "class_source":
        return probability[:, 2] + probability[:, 3]
    return probability[:, 1]


def diagnose(
    diagnoser: nn.Module, context: TrainingContext, mri: Tensor, pet: Tensor | None
) -> DiagnoserOutput:
    """D(x, p): the diagnoser on the MRI and, when given, the PET stacked as a second channel.

    The forward pass runs under the run's autocast; callers compute losses in float32.
    """
    inputs = mri if pet is None else torch.cat([mri, pet], dim=1)
    with context.autocast():
        return diagnoser(inputs)


def real_where(batch: Batch, predict_with: str) -> Tensor:
    """[B] bool: the subjects whose own PET a prediction uses (none under ``"synthetic"``)."""
    return batch.has_pet if predict_with == "real" else torch.zeros_like(batch.has_pet)


def fill_pet(
    batch: Batch, use_real: Tensor, replacement: Tensor, source: PetSource
) -> tuple[Tensor, list[PetSource]]:
    """The PET channel p = m * y + (1 - m) * r, and each subject's source, for m = ``use_real``.

    ``replacement`` (r) is [B, 1, D, H, W] or broadcastable to it (a mean volume
    [1, 1, D, H, W]); subjects that take it are reported with ``source``.
    """
    pet = torch.where(use_real.view(-1, 1, 1, 1, 1), batch.pet, replacement.to(batch.pet.dtype))
    sources: list[PetSource] = ["real" if bool(r) else source for r in use_real.tolist()]
    return pet, sources


def diagnoser_optimiser(
    diagnoser: nn.Module, context: TrainingContext, weight_decay: float
) -> torch.optim.Adam:
    """Adam at the run's learning rate with L2 weight decay: every method's diagnoser optimiser."""
    return torch.optim.Adam(diagnoser.parameters(), lr=context.learning_rate, weight_decay=weight_decay)


def selected_stage(
    context: TrainingContext,
    name: str,
    modules: dict[str, nn.Module],
    optimisers: dict[str, torch.optim.Optimizer],
    step: Callable[[Batch], Mapping[str, Tensor]],
    subjects: Literal["all", "with_pet"] = "all",
) -> TrainingStage:
    """A stage that trains for the run's epochs and selects on the run's metric and patience.

    Diagnosis stages of every method are built here, so they all stop and select alike.
    """
    return TrainingStage(
        name=name,
        modules=modules,
        optimisers=optimisers,
        step=step,
        epochs=context.epochs,
        select_on=context.select_on,
        subjects=subjects,
        patience=context.patience,
    )
