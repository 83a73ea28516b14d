"""Pieces shared by the couplings of the built-in plugins (CDSF's joint one and the baselines).

Every coupling ends in the same place: a diagnoser D that reads the MRI x, stacked with a
PET channel p when it has one, and turns its logits into P(positive class). What differs
between methods is where p comes from for each subject (real PET, synthetic PET G(x), the
training mean, nothing) and how the networks are trained. Keeping the shared arithmetic
here means that every method predicts, reports its PET source and fills its training
stage in exactly the same way, so differences between methods are differences of method.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdsf_bench import Batch, TrainingContext, TrainingStage
from cdsf_bench.interfaces import DiagnoserOutput, PetSource
from cdsf_plugins.patchgan import PatchGAN3D
from cdsf_plugins.space_to_depth import memory_format_of

#: which PET a coupling with a synthesiser predicts with, for subjects whose PET is real
PREDICT_WITH = ("real", "synthetic")
#: which training subjects give a diagnoser synthetic pairs (``synthetic_pairs``): every labelled
#: one, those without PET, or every labelled one from the generator of the other half
SYNTHETIC_PAIRS = ("all", "missing", "cross_fitted")


def check_choice(setting: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise say which values are."""
    if value not in allowed:
        raise ValueError(f"{setting} must be one of {allowed}, got {value!r}")
    return value


def has_own_objective(synthesiser: nn.Module) -> bool:
    """Whether ``synthesiser`` brings its own training objective, ``training_loss(mri, pet)``.

    The optional part of the synthesiser contract (docs/plugins.md): a synthesiser whose
    output is not what it should be trained on (the diffusion synthesiser, whose inference
    is an iterative sampler) says how it learns from pairs with real PET.
    """
    return callable(getattr(synthesiser, "training_loss", None))


def own_objective(synthesiser: nn.Module, context: TrainingContext, mri: Tensor, pet: Tensor) -> Tensor:
    """[B] the synthesiser's own per-subject loss on (``mri``, real ``pet``), in float32.

    Empty, without a forward, when there are no subjects (a process holding none of them
    still passes the result to ``context.mean``).
    """
    if not len(mri):
        return mri.new_zeros(0)
    with context.autocast():
        losses: Tensor = getattr(synthesiser, "training_loss")(mri, pet)  # noqa: B009  (nn.Module's stubs)
    return losses.float()


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` normalises with batch statistics anywhere (BatchNorm layers)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``module`` as a fixed function while another network learns from it.

    Its parameters take no gradient and it runs in evaluation mode, so normalisation uses
    its running statistics (the ones it predicts with) and leaves them unchanged: a
    frozen network's weights and statistics do not move, and a consistency loss between
    two of its outputs is 0 when its two inputs are equal, whatever the norm.
    """
    training = module.training
    module.requires_grad_(False)
    module.eval()
    try:
        yield
    finally:
        module.requires_grad_(True)
        module.train(training)


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
    diagnoser: nn.Module,
    context: TrainingContext,
    mri: Tensor,
    pet: Tensor | None,
    acquired: Tensor | None = None,
) -> DiagnoserOutput:
    """D(x, p): the diagnoser on the MRI and, when given, the PET stacked as a second channel.

    With ``acquired`` ([B] bool, the ``pet_indicator`` setting of the couplings that read PET)
    a third channel follows: a volume of 1 where p is the subject's acquired PET and of 0 where
    it is imputed (synthetic or the mean), so D can learn to weigh an imputed PET differently.
    The forward pass runs under the run's autocast; callers compute losses in float32.
    """
    inputs = mri if pet is None else torch.cat([mri, pet], dim=1)
    if acquired is not None:
        indicator = acquired.to(mri.dtype).view(-1, 1, 1, 1, 1).expand_as(mri)
        inputs = torch.cat([inputs, indicator], dim=1)
    with context.autocast():
        return diagnoser(inputs)


def acquired_where(sources: list[PetSource], device: torch.device) -> Tensor:
    """[B] bool: the subjects whose PET channel is their acquired PET (source "real")."""
    return torch.tensor([source == "real" for source in sources], dtype=torch.bool, device=device)


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


def _bce(logits: Tensor, target: float) -> Tensor:
    """Per-subject BCE-with-logits of a patch map against a constant label, in float32."""
    logits = logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")
    return loss.flatten(1).mean(dim=1)


class AdversarialCritic:
    """A conditional patch discriminator P(x, p) and its optimiser: the pix2pix game, shared.

    The decoupled generator and (with ``w_adv`` > 0) the joint one are trained against the
    same critic, so "joint versus two-stage" can be compared with the generator's loss held
    fixed. P learns L_P = 1/2 [BCE(P(x, y), 1) + BCE(P(x, sg(y_hat)), 0)] on subjects with
    real PET; the generator's term is BCE(P(x, y_hat), 1) with P frozen. Patch maps are
    averaged per subject, subjects by ``context.mean`` (exact under data parallelism).
    """

    def __init__(self, context: TrainingContext, network: nn.Module, learning_rate: float) -> None:
        self.context = context
        self.network = network
        self.optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate, betas=(0.5, 0.999))

    def _judge(self, mri: Tensor, pet: Tensor) -> Tensor:
        with self.context.autocast():
            return self.network(torch.cat([mri, pet], dim=1))

    def _per_subject(self, mri: Tensor, pet: Tensor, target: float) -> Tensor:
        if not len(mri):  # this process holds none of them; context.mean must still be called
            return mri.new_zeros(0)
        return _bce(self._judge(mri, pet), target)

    def learn(self, mri: Tensor, real: Tensor, fake: Tensor) -> Tensor:
        """One update of P on real and (detached) synthetic pairs; returns L_P."""
        real_term = self.context.mean(self._per_subject(mri, real, 1.0))
        fake_term = self.context.mean(self._per_subject(mri, fake.detach(), 0.0))
        loss = 0.5 * (real_term + fake_term)
        self.optimiser.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        self.optimiser.step()  # every process steps, so gradient averaging stays in step
        return loss.detach()

    def fooling(self, mri: Tensor, fake: Tensor) -> Tensor:
        """The generator's adversarial term BCE(P(x, y_hat), 1) over every subject given."""
        with frozen(self.network):
            return self.context.mean(self._per_subject(mri, fake, 1.0))


class FeatureCritic:
    """A diagnoser F(x, p) trained on real pairs, whose features a two-stage generator matches.

    The two-stage couplings' reading of CDSF's feature consistency: G has no diagnoser beside
    it while it learns, so F is trained in the synthesis stage with L_F = CE(F(x, y), c) on
    the labelled subjects with PET (Adam at the run's learning rate and the diagnoser's weight
    decay, as every diagnoser), and G's term is ||f(x, y_hat) - f(x, y)||^2 with F frozen
    (evaluation mode, no gradient into F): F normalises both inputs alike with its running
    statistics, so the term is exactly 0 for y_hat = y, as the joint coupling's is. F is
    discarded after the stage: the diagnosis stage trains its own D.
    """

    def __init__(self, context: TrainingContext, network: nn.Module, weight_decay: float) -> None:
        self.context = context
        self.network = network
        self.batch_norm = has_batch_norm(network)
        self.optimiser = diagnoser_optimiser(network, context, weight_decay)

    def learn(self, batch: Batch) -> Tensor:
        """One update of F on its labelled subjects' real pairs (every subject here has PET).

        A forward of one subject is skipped for a batch-norm F, as every diagnoser's is.
        """
        labelled = batch.labelled
        losses = batch.mri.new_zeros(0)
        if int(labelled.sum()) > int(self.batch_norm):
            output = diagnose(self.network, self.context, batch.mri[labelled], batch.pet[labelled])
            losses = F.cross_entropy(output.logits.float(), batch.label[labelled], reduction="none")
        loss = self.context.mean(losses)
        self.optimiser.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        self.optimiser.step()  # every process steps, so gradient averaging stays in step
        return loss.detach()

    def consistency(self, mri: Tensor, fake: Tensor, real: Tensor) -> Tensor:
        """The generator's term ||f(x, y_hat) - f(x, y)||^2, averaged over the subjects given."""
        distance = mri.new_zeros(0)
        if len(mri):
            with frozen(self.network):
                made = diagnose(self.network, self.context, mri, fake).features.float()
                with torch.no_grad():
                    aim = diagnose(self.network, self.context, mri, real).features.float()
            distance = (made - aim).pow(2).sum(dim=1)
        return self.context.mean(distance)


def patch_critic(
    context: TrainingContext, generator: nn.Module, widths: tuple[int, ...], norm: str
) -> nn.Module:
    """A PatchGAN critic on the run's device, in the generator's memory layout."""
    critic = PatchGAN3D(2, tuple(widths), norm)
    layout = memory_format_of(generator)
    # torch's stubs lack Module.to's memory_format keyword, which exists
    return critic.to(context.device, memory_format=layout)  # type: ignore[call-overload]


def cohort_halves(batch: Batch) -> Tensor:
    """[B] long: each subject's half of the cohort under cross-fitting (0 = A, 1 = B).

    A hash of the subject's cohort row, so a subject keeps its half in every epoch, batch
    and process, and the halves are unrelated to the row order (a table sorted by class).
    """
    bits = [hashlib.sha256(f"cdsf-half:{row}".encode()).digest()[0] & 1 for row in batch.index.tolist()]
    return torch.tensor(bits, dtype=torch.long, device=batch.mri.device)


def through_halves(
    generators: list[nn.Module], context: TrainingContext, mri: Tensor, half: Tensor, grad: bool
) -> Tensor:
    """Each subject's MRI through generator ``half[i]``; frozen and without gradient unless ``grad``."""
    parts: list[Tensor] = []
    rows: list[Tensor] = []
    for k, generator in enumerate(generators):
        chosen = torch.nonzero(half == k).flatten()
        if not len(chosen):  # this share holds no subject of the half
            continue
        with contextlib.ExitStack() as stack:
            if not grad:
                stack.enter_context(torch.no_grad())
                stack.enter_context(frozen(generator))
            stack.enter_context(context.autocast())
            parts.append(generator(mri[chosen]))
        rows.append(chosen)
    order = torch.cat(rows)
    return torch.cat(parts)[torch.argsort(order)]


def own_objective_by_half(
    generators: list[nn.Module], context: TrainingContext, mri: Tensor, pet: Tensor, half: Tensor
) -> Tensor:
    """Each subject's loss under its own half's generator's own objective, half A's first."""
    losses = [
        own_objective(generator, context, mri[half == k], pet[half == k])
        for k, generator in enumerate(generators)
    ]
    return torch.cat(losses)
