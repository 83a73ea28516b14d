"""The task-induced coupling: the generator's adversary also diagnoses (TPA-GAN's idea).

TPA-GAN (Gao, Shi, Shen, Liu, IEEE JBHI 2022) integrates "the disease classification task
into GAN for generating the missing PET" from MRI, then diagnoses with a separate network
on the imputed images. Our reading (docs/methods.md says which parts are the paper's):
stage 1 trains the generator G against a task-induced adversary A, a diagnoser built by the
run's ``--diag`` factory with K + 1 outputs (the K classes of real pairs, then one "synthetic"
output, the semi-supervised GAN's head), next to the decoupled baseline's pix2pix losses;
stage 2 is the decoupled baseline's diagnosis stage (G frozen; its ``pet_indicator`` too).
Notation as in baselines.py; K is the task's class count, a_k(x, p) = softmax(A(x, p))_k,
and for a subject without a usable label ("unlabelled", ``Batch.labelled`` False) "real" is
-log sum_{k<K} a_k, the log-probability of any real class.

    L_A = 1/2 [ mean_PET  CE(A(x, y), c)   (labelled)  |  -log sum_{k<K} a_k(x, y)  (unlabelled)
              + mean_all  CE(A(x, sg(y_hat)), K) ]
    L_G = w_l1 * |y_hat - y|_1                                        [subjects with PET]
        + w_adv * BCE(P(x, y_hat), 1)                                 [all subjects]
        + w_task * [ CE(A(x, y_hat), c)  (labelled)  |  -log sum_{k<K} a_k(x, y_hat)  (unlabelled) ]
                                                                      [all subjects]

So A learns to tell real pairs from synthetic ones and the class of the real ones, and G is
pushed to make PET that A takes for real PET of the subject's own class, on every training
subject, those without PET included (the task term needs MRI and label only). The patch
critic P and its L_P are the decoupled baseline's (``w_adv`` = 0 removes them); A uses Adam
(``task_lr``, betas (0.5, 0.999)). A's real and synthetic pairs go through one forward, so
batch norm normalises them together; a forward that would give batch norm one subject is
skipped (``skipped_single``). G learns from A (and P) frozen: evaluation mode and no
gradient, so A's weights and running statistics do not move in G's step. Every mean is
over the whole batch (``context.mean``, exact under data parallelism).

A synthesiser with its own objective (``training_loss``; the diffusion synthesiser) has it
in place of the L1 term, over subjects with PET (``own``), and no patch critic (as in the
decoupled baseline); the task term then acts on its training-mode output, the one-step
estimate of the clean PET. The label reaches G only through A's task term: like CDSF's
``w_diag`` it is a path from every training subject's label into y_hat (docs/methods.md),
which the stage-2 diagnoser can learn to read, and it is the method as published.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from cdsf_bench import Batch, TrainingContext, TrainingStage
from cdsf_bench.interfaces import DiagnoserFactory, SynthesiserFactory
from cdsf_plugins.baselines import DecoupledCoupling
from cdsf_plugins.common import diagnose, frozen, has_batch_norm, own_objective


class TaskInducedCoupling(DecoupledCoupling):
    """Two stages: G against a diagnosing adversary (and the patch critic), then the diagnoser."""

    name = "task-induced"

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
        *,
        w_task: float = 1.0,
        task_lr: float = 2e-4,
        w_adv: float = 1.0,
        w_l1: float = 100.0,
        synthesis_lr: float = 2e-4,
        synthesis_epochs: int = 0,
        discriminator_widths: tuple[int, ...] = (16, 32, 64),
        discriminator_norm: str = "instance",
        predict_with: str = "real",
        weight_decay: float = 1e-4,
        pet_indicator: bool = False,
    ) -> None:
        super().__init__(
            context,
            build_synthesiser,
            build_diagnoser,
            w_adv=w_adv,
            w_l1=w_l1,
            synthesis_lr=synthesis_lr,
            synthesis_epochs=synthesis_epochs,
            discriminator_widths=discriminator_widths,
            discriminator_norm=discriminator_norm,
            predict_with=predict_with,
            weight_decay=weight_decay,
            pet_indicator=pet_indicator,
        )
        self.w_task = w_task
        self.classes = context.num_classes
        #: A: the run's diagnoser on (MRI, PET) with K real-class outputs and one synthetic
        self.adversary = build_diagnoser(2, self.classes + 1)
        self.adversary_batch_norm = has_batch_norm(self.adversary)
        self.optimise_adversary = torch.optim.Adam(
            self.adversary.parameters(), lr=task_lr, betas=(0.5, 0.999)
        )

    def _gan(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        modules, optimisers = super()._gan()
        modules["task_adversary"] = self.adversary
        optimisers["task_adversary"] = self.optimise_adversary
        return modules, optimisers

    def stages(self) -> list[TrainingStage]:
        synthesis, *rest = super().stages()
        # the task term needs MRI and label only: every training subject feeds stage 1, and
        # those without a usable label learn the terms that need none
        synthesis.subjects = "all"
        synthesis.labels = "where_known"
        return [synthesis, *rest]

    def _real(self, logits: Tensor, label: Tensor, labelled: Tensor) -> Tensor:
        """[B] -log P(real, class c) where labelled, else -log P(real, any class)."""
        logits = logits.float()
        known = F.cross_entropy(logits, label.clamp(min=0), reduction="none")
        unknown = torch.logsumexp(logits, dim=1) - torch.logsumexp(logits[:, : self.classes], dim=1)
        return torch.where(labelled, known, unknown)

    def adversary_loss(self, batch: Batch, synthetic: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_A on real pairs (subjects with PET) and detached synthetic pairs (all), in one forward."""
        real = batch.has_pet
        mri = torch.cat([batch.mri[real], batch.mri])
        pet = torch.cat([batch.pet[real], synthetic.detach().to(batch.pet.dtype)])
        n_real = int(real.sum())
        skipped = len(mri) == 1 and self.adversary_batch_norm
        real_losses = synthetic_losses = mri.new_zeros(0)
        if len(mri) and not skipped:
            logits = diagnose(self.adversary, self.context, mri, pet).logits.float()
            real_losses = self._real(logits[:n_real], batch.label[real], batch.labelled[real])
            fake = torch.full((len(batch),), self.classes, dtype=torch.long, device=logits.device)
            synthetic_losses = F.cross_entropy(logits[n_real:], fake, reduction="none")
        terms = {
            "task_real": self.context.mean(real_losses),
            "task_synth": self.context.mean(synthetic_losses),
            "skipped_single": torch.tensor(float(skipped)),
        }
        return 0.5 * (terms["task_real"] + terms["task_synth"]), terms

    def generator_loss(self, batch: Batch, synthetic: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_G: L1 (or the synthesiser's own objective), P's and A's signals; A and P frozen."""
        real = batch.has_pet
        zero = torch.zeros((), device=batch.mri.device)
        terms = {"l1": zero, "adv": zero, "task": zero}
        if self.own_objective:
            terms["own"] = self.context.mean(
                own_objective(self.synthesiser, self.context, batch.mri[real], batch.pet[real])
            )
            loss = terms["own"]
        else:
            l1 = (synthetic.float() - batch.pet).abs().flatten(1).mean(dim=1)
            terms["l1"] = self.context.mean(l1[real])
            loss = self.w_l1 * terms["l1"]
        if self.critic is not None:
            terms["adv"] = self.critic.fooling(batch.mri, synthetic)
            loss = loss + self.w_adv * terms["adv"]
        if self.w_task:
            losses = batch.mri.new_zeros(0)
            with frozen(self.adversary):
                if len(batch):
                    logits = diagnose(self.adversary, self.context, batch.mri, synthetic).logits
                    losses = self._real(logits, batch.label, batch.labelled)
            terms["task"] = self.context.mean(losses)
            loss = loss + self.w_task * terms["task"]
        return loss, terms

    def synthesis_step(self, batch: Batch) -> Mapping[str, Tensor]:
        """One stage-1 update: A on L_A, P on L_P (subjects with PET), then G on L_G."""
        real = batch.has_pet
        with self.context.autocast():
            synthetic = self.synthesiser(batch.mri)
        loss_a, terms_a = self.adversary_loss(batch, synthetic)
        # every process steps, even without a gradient, so data parallelism stays in step
        self.optimise_adversary.zero_grad(set_to_none=True)
        if loss_a.requires_grad:
            loss_a.backward()
        self.optimise_adversary.step()
        critic = {}
        if self.critic is not None:
            critic["D"] = self.critic.learn(batch.mri[real], batch.pet[real], synthetic[real])
        loss_g, terms_g = self.generator_loss(batch, synthetic)
        self.optimise_synthesiser.zero_grad(set_to_none=True)
        if loss_g.requires_grad:
            loss_g.backward()
        self.optimise_synthesiser.step()
        losses = {"A": loss_a, "G": loss_g, **terms_a, **critic, **terms_g}
        return {key: value.detach() for key, value in losses.items()}
