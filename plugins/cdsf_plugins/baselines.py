"""The baselines CDSF is compared with: two-stage synthesis, single-modality and references.

Notation as in cdsf.py: x is the MRI, y the real PET (present where m = 1), y* the PET of
every subject (known only on the phantom), c the class, D the diagnoser with logits
D(x, p), G the synthesiser, sg() stops gradients, CE is cross-entropy and BCE the binary
cross-entropy on logits. Losses are computed in float32 from forward passes under the
run's autocast.

Every method here ends in a diagnoser trained on one stage with

    L_D = CE(D(x, p), c)                       [the labelled training subjects of the method]

(a diagnosis stage draws labelled subjects only, ``TrainingStage.labels = "required"``:
a subject whose label must not be used never reaches it), and predicting
P(positive) = softmax(D(x, p))_1. They differ only in the PET channel p:

    single         no PET channel: D reads x alone (pet_source "none")
    mean-impute    p = m * y + (1 - m) * mean_train(y)   (pet_source "real" / "mean")
    complete-case  p = y, trained and tested on subjects with PET only (a reference row)
    oracle         p = y* for every subject, the hidden PET included (a reference row)
    decoupled      p = m * y + (1 - m) * G(x), with G trained first and then frozen

so they share one implementation, :class:`DiagnosisCoupling`, parameterised by
``pet_channel``.

``decoupled`` is the usual two-stage pipeline, pix2pix-style (Isola et al., 2017) in 3D.
Stage 1, "synthesis", on subjects with real PET (the unlabelled ones too: it reads no
label, ``labels = "unused"``), alternates a patch discriminator P
(patchgan.py, conditioned on x) and the generator G, with y_hat = G(x):

    L_P = 1/2 * [ BCE(P(x, y), 1) + BCE(P(x, sg(y_hat)), 0) ]
    L_G = BCE(P(x, y_hat), 1) + w_l1 * |y_hat - y|_1

(the 1/2 is pix2pix's: it slows P relative to G; BCE averages over the patch map, L1 over
the voxels). Both use Adam(``synthesis_lr`` = 2e-4, betas (0.5, 0.999)); P is frozen while
G learns from it. The stage selects G (and P) on the validation MAE of G(x), lower being
better. Stage 2, "diagnosis", freezes G (evaluation mode, no gradient) and trains D on
the pairs above with real PET where it exists; prediction uses real PET where it exists
(``predict_with = "real"``) or G(x) for everyone (``"synthetic"``), and always returns
G(x) so that synthesis is scored. A prediction's G(x) is remembered while G's weights stay
the same (memo.py): the frozen G meets the same validation batches every diagnosis epoch.
Unlike CDSF, the diagnosis never shapes G.

A synthesiser with its own objective (``training_loss(mri, pet)``, docs/plugins.md; the
diffusion synthesiser's noise-prediction MSE) is trained on that alone in stage 1,
L_G = mean over subjects with PET of its per-subject loss: no critic is built and ``w_adv``
and ``w_l1`` are unused, so the two-stage diffusion baseline is the diffusion model as
published. ``task-induced`` (task_induced.py) is this coupling with a second adversary in
stage 1 that also diagnoses.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cdsf_bench import Batch, Coupling, Prediction, TrainingContext, TrainingStage
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import DiagnoserFactory, PetSource, SynthesiserFactory
from cdsf_plugins.common import (
    PREDICT_WITH,
    SYNTHETIC_PAIRS,
    AdversarialCritic,
    FeatureCritic,
    acquired_where,
    check_choice,
    cohort_halves,
    diagnose,
    diagnoser_optimiser,
    fill_pet,
    has_batch_norm,
    has_own_objective,
    own_objective,
    own_objective_by_half,
    patch_critic,
    positive_probability,
    real_where,
    selected_stage,
    through_halves,
)
from cdsf_plugins.memo import FrozenOutputs


class PetChannel(NamedTuple):
    """The PET a diagnoser reads for one batch, where it came from, and any synthetic PET."""

    pet: Tensor | None  # [B, 1, D, H, W], or None for MRI alone
    sources: list[PetSource]
    synthetic: Tensor | None = None  # [B, 1, D, H, W] where the method synthesises


class DiagnosisCoupling(Coupling):
    """A diagnoser trained with cross-entropy on (x, p); subclasses say what p is.

    ``in_channels`` is 2 (MRI and PET) unless a subclass reads the MRI alone; one more with
    ``pet_indicator`` (the PET-acquired channel, common.diagnose), which a subclass that
    offers the setting stores before this constructor builds D. The one training stage,
    "diagnosis", sees the subjects named by the class's ``subjects`` and selects on the
    run's metric.
    """

    needs_synthesiser = False
    in_channels = 2
    pet_indicator = False

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
        *,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__(context, build_synthesiser, build_diagnoser)
        self.diagnoser = build_diagnoser(self.in_channels + int(self.pet_indicator))
        self.batch_norm = has_batch_norm(self.diagnoser)
        self.optimise_diagnoser = diagnoser_optimiser(self.diagnoser, context, weight_decay)

    @abstractmethod
    def pet_channel(self, batch: Batch, training: bool) -> PetChannel:
        """The PET channel for ``batch``; ``training`` tells a training step from a prediction."""

    def training_pairs(self, batch: Batch) -> tuple[Tensor, PetChannel, Tensor]:
        """The MRI, PET channel and labels of the pairs one step learns from: each subject's own."""
        return batch.mri, self.pet_channel(batch, training=True), batch.label

    def _diagnose(self, mri: Tensor, channel: PetChannel) -> Tensor:
        """D's logits on (x, p), and the PET-acquired channel under ``pet_indicator``."""
        acquired = acquired_where(channel.sources, mri.device) if self.pet_indicator else None
        return diagnose(self.diagnoser, self.context, mri, channel.pet, acquired).logits

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"diagnoser": self.diagnoser}

    def stages(self) -> list[TrainingStage]:
        return [
            selected_stage(
                self.context,
                "diagnosis",
                {"diagnoser": self.diagnoser},
                {"diagnoser": self.optimise_diagnoser},
                self.step,
                subjects=self.subjects,
            )
        ]

    def step(self, batch: Batch) -> Mapping[str, Tensor]:
        """One update of D on L_D = CE(D(x, p), c) over the step's pairs, averaged over the batch.

        A forward of one pair (data parallelism over small batches) is not shown to a
        batch-norm diagnoser in training mode (``skipped_single``); it still takes part in
        the gradient average with nothing.
        """
        mri, channel, label = self.training_pairs(batch)
        skipped = len(mri) == 1 and self.batch_norm
        losses = batch.mri.new_zeros(0)
        if len(mri) and not skipped:
            losses = F.cross_entropy(self._diagnose(mri, channel).float(), label, reduction="none")
        loss = self.context.mean(losses)
        self.optimise_diagnoser.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        self.optimise_diagnoser.step()
        return {"cls": loss.detach(), "skipped_single": torch.tensor(float(skipped))}

    def predict(self, batch: Batch) -> Prediction:
        channel = self.pet_channel(batch, training=False)
        logits = self._diagnose(batch.mri, channel)
        return Prediction(positive_probability(logits), channel.sources, channel.synthetic)


class SingleModality(DiagnosisCoupling):
    """The diagnoser on MRI alone: what the cohort's MRI can tell without any PET."""

    in_channels = 1

    def pet_channel(self, batch: Batch, training: bool) -> PetChannel:
        return PetChannel(None, ["none"] * len(batch))


class MeanImpute(DiagnosisCoupling):
    """Missing PET replaced by the mean real PET of the training subjects that have it."""

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
        *,
        weight_decay: float = 1e-4,
        pet_indicator: bool = False,
    ) -> None:
        self.pet_indicator = pet_indicator
        super().__init__(context, build_synthesiser, build_diagnoser, weight_decay=weight_decay)

    def pet_channel(self, batch: Batch, training: bool) -> PetChannel:
        pet, sources = fill_pet(batch, batch.has_pet, self.context.train_pet_mean, "mean")
        return PetChannel(pet, sources)


class CompleteCase(DiagnosisCoupling):
    """Trained and tested on subjects with real PET only (the engine draws no others)."""

    subjects = "with_pet"

    def pet_channel(self, batch: Batch, training: bool) -> PetChannel:
        return PetChannel(batch.pet, ["real"] * len(batch))


class Oracle(DiagnosisCoupling):
    """Real PET for every subject, the withheld PET included: the ceiling synthesis aims at."""

    needs_pet_truth = True

    def pet_channel(self, batch: Batch, training: bool) -> PetChannel:
        if batch.pet_truth is None:
            raise InputError(
                "The oracle needs every subject's real PET (pet_truth), which this data does not have; "
                "only the phantom keeps the PET it withholds."
            )
        return PetChannel(batch.pet_truth, ["real"] * len(batch))


class DecoupledCoupling(DiagnosisCoupling):
    """Two stages: a pix2pix-style 3D conditional GAN, then a diagnoser on real-or-imputed PET.

    ``synthesis_epochs`` = 0 means the run's epochs; the diagnosis stage always uses them.
    ``w_adv`` = 0 trains the generator on the L1 term alone (no critic); ``w_feature`` > 0 adds
    CDSF's feature consistency against a diagnoser F of real pairs trained beside G
    (common.FeatureCritic), so the joint coupling's generator loss can be trained two-stage.
    ``synthetic_pairs`` is the joint coupling's setting: which labelled training subjects
    give D synthetic pairs, beside every real pair. ``"missing"``: those without PET, each
    subject's own pair (real PET, else G(x)); ``"all"``: every one, G(x) in-sample for those
    with PET; ``"cross_fitted"``: every one, from the generator of the other half of the
    cohort (two generators, each trained on its own half's subjects against one critic), and
    a prediction averages D's probability over the two generators (the synthetic PET it
    reports and the synthesis stage's validation MAE are of their mean).
    """

    needs_synthesiser = True
    #: the coupling's name, as its settings are addressed (``--set coupling.NAME.KEY=VALUE``)
    name = "decoupled"

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
        *,
        w_adv: float = 1.0,
        w_l1: float = 100.0,
        w_feature: float = 0.0,
        synthesis_lr: float = 2e-4,
        synthesis_epochs: int = 0,
        discriminator_widths: tuple[int, ...] = (16, 32, 64),
        discriminator_norm: str = "instance",
        predict_with: str = "real",
        synthetic_pairs: str = "missing",
        weight_decay: float = 1e-4,
        pet_indicator: bool = False,
    ) -> None:
        self.pet_indicator = pet_indicator
        super().__init__(context, build_synthesiser, build_diagnoser, weight_decay=weight_decay)
        if build_synthesiser is None:
            raise InputError(f"The {self.name} coupling trains a synthesiser; choose one with --synth.")
        if synthesis_epochs < 0:
            raise InputError(
                f"coupling.{self.name}.synthesis_epochs must be 0 (the run's epochs) or more, "
                f"got {synthesis_epochs}."
            )
        self.predict_with = check_choice("predict_with", predict_with, PREDICT_WITH)
        self.synthetic_pairs = check_choice("synthetic_pairs", synthetic_pairs, SYNTHETIC_PAIRS)
        self.w_adv, self.w_l1, self.w_feature = w_adv, w_l1, w_feature
        self.synthesis_epochs = synthesis_epochs or context.epochs
        self.synthesiser = build_synthesiser()
        #: one generator per half of the cohort under cross-fitting, else the one
        self.synthesisers = [self.synthesiser]
        if synthetic_pairs == "cross_fitted":
            self.synthesisers.append(build_synthesiser())
        #: the synthesiser learns from its own objective (no critic, no L1, no feature term)
        self.own_objective = has_own_objective(self.synthesiser)
        self.critic = None
        if w_adv and not self.own_objective:
            network = patch_critic(context, self.synthesiser, discriminator_widths, discriminator_norm)
            self.critic = AdversarialCritic(context, network, synthesis_lr)
        self.optimise_synthesiser = torch.optim.Adam(
            [p for g in self.synthesisers for p in g.parameters()], lr=synthesis_lr, betas=(0.5, 0.999)
        )
        self.features = None
        if w_feature and not self.own_objective:
            self.features = FeatureCritic(context, build_diagnoser(2), weight_decay)
        #: each G's predictions, computed once per input while its weights stay as they are
        #: (the frozen G of the diagnosis stage meets the same validation batches every epoch)
        self.remembered = [FrozenOutputs(g) for g in self.synthesisers]

    def _gan(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        modules: dict[str, torch.nn.Module] = {"synthesiser": self.synthesiser}
        optimisers: dict[str, torch.optim.Optimizer] = {"synthesiser": self.optimise_synthesiser}
        if len(self.synthesisers) > 1:
            modules["synthesiser_b"] = self.synthesisers[1]
        if self.critic is not None:
            modules["discriminator"] = self.critic.network
            optimisers["discriminator"] = self.critic.optimiser
        if self.features is not None:
            modules["feature_diagnoser"] = self.features.network
            optimisers["feature_diagnoser"] = self.features.optimiser
        return modules, optimisers

    def modules(self) -> dict[str, torch.nn.Module]:
        return {**super().modules(), **self._gan()[0]}

    def stages(self) -> list[TrainingStage]:
        modules, optimisers = self._gan()
        synthesis = TrainingStage(
            name="synthesis",
            modules=modules,
            optimisers=optimisers,
            step=self.synthesis_step,
            epochs=self.synthesis_epochs,
            select_on="mae",
            subjects="with_pet",
            patience=self.context.patience,
            # the GAN reads no label: unlabelled subjects with PET train it too (and every
            # term but F's under the feature term, whose F learns from the labelled ones)
            labels="unused" if self.features is None else "where_known",
        )
        return [synthesis, *super().stages()]

    def synthesis_step(self, batch: Batch) -> Mapping[str, Tensor]:
        """One pix2pix update: P on L_P (and F on L_F), then G on L_G (every subject has PET).

        Under cross-fitting each subject's y_hat is its own half's generator's, so a generator
        learns from its half alone. A synthesiser with its own objective takes one update on
        that instead (``own``).
        """
        mri, real = batch.mri, batch.pet
        half = cohort_halves(batch) if len(self.synthesisers) > 1 else None
        if self.own_objective:
            if half is None:
                per_subject = own_objective(self.synthesiser, self.context, mri, real)
            else:
                per_subject = own_objective_by_half(self.synthesisers, self.context, mri, real, half)
            own = self.context.mean(per_subject)
            self.optimise_synthesiser.zero_grad(set_to_none=True)
            if own.requires_grad:
                own.backward()
            self.optimise_synthesiser.step()
            return {"G": own.detach(), "own": own.detach()}
        if half is None:
            with self.context.autocast():
                fake = self.synthesiser(mri)
        else:
            fake = through_halves(self.synthesisers, self.context, mri, half, grad=True)
        zero = torch.zeros((), device=mri.device)
        loss_p, adversarial = zero, zero
        if self.critic is not None:
            loss_p = self.critic.learn(mri, real, fake)
            adversarial = self.critic.fooling(mri, fake)
        l1 = self.context.mean((fake.float() - real).abs().flatten(1).mean(dim=1))
        loss_g = self.w_adv * adversarial + self.w_l1 * l1
        feature: dict[str, Tensor] = {}
        if self.features is not None:
            feature["F"] = self.features.learn(batch)
            feature["feature"] = self.features.consistency(mri, fake, real)
            loss_g = loss_g + self.w_feature * feature["feature"]
        self.optimise_synthesiser.zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimise_synthesiser.step()
        losses = {"D": loss_p, "G": loss_g, "adv": adversarial, "l1": l1, **feature}
        return {key: value.detach() for key, value in losses.items()}

    def training_pairs(self, batch: Batch) -> tuple[Tensor, PetChannel, Tensor]:
        """Every real pair, then every subject's synthetic pair (in-sample, or cross-fitted).

        One forward of both, so batch norm normalises them together, as the joint coupling's
        D does; under ``"missing"`` each subject's own pair (real PET, else G's).
        """
        if self.synthetic_pairs == "missing":
            return super().training_pairs(batch)
        for generator in self.synthesisers:
            generator.eval()  # frozen in the diagnosis stage: its norms behave as at inference
        real = batch.has_pet
        if len(self.synthesisers) == 1:
            with torch.no_grad(), self.context.autocast():
                synthetic = self.synthesiser(batch.mri)
        else:
            other = 1 - cohort_halves(batch)
            synthetic = through_halves(self.synthesisers, self.context, batch.mri, other, grad=False)
        n_real = int(real.sum())
        sources: list[PetSource] = ["real" if i < n_real else "synthetic" for i in range(n_real + len(batch))]
        channel = PetChannel(torch.cat([batch.pet[real], synthetic.to(batch.pet.dtype)]), sources)
        return torch.cat([batch.mri[real], batch.mri]), channel, torch.cat([batch.label[real], batch.label])

    def pet_channel(self, batch: Batch, training: bool) -> PetChannel:
        """Real PET where training has it, else G's; a prediction also returns G's for all.

        While training, G (frozen, in eval mode, so each subject's output is its own) runs
        only on the subjects without PET: the others' synthetic PET would be thrown away.
        """
        if not training:
            return self._predicted_channel(batch, 0)
        self.synthesiser.eval()  # frozen in the diagnosis stage: its norms behave as at inference
        missing = ~batch.has_pet
        pet = batch.pet.clone()
        if bool(missing.any()):
            with torch.no_grad(), self.context.autocast():
                pet[missing] = self.synthesiser(batch.mri[missing]).to(pet.dtype)
        return PetChannel(pet, ["real" if bool(r) else "synthetic" for r in batch.has_pet.tolist()])

    def _predicted_channel(self, batch: Batch, generator: int) -> PetChannel:
        """The PET channel a prediction reads with generator ``generator``'s y_hat, and y_hat."""
        synthesiser, remembered = self.synthesisers[generator], self.remembered[generator]
        with torch.no_grad(), self.context.autocast():
            synthetic = remembered(batch.mri, lambda: synthesiser(batch.mri).float())
        pet, sources = fill_pet(batch, real_where(batch, self.predict_with), synthetic, "synthetic")
        return PetChannel(pet, sources, synthetic)

    def predict(self, batch: Batch) -> Prediction:
        """D on real-or-imputed PET; under cross-fitting averaged over the two generators."""
        if len(self.synthesisers) == 1:
            return super().predict(batch)
        channels = [self._predicted_channel(batch, k) for k in range(len(self.synthesisers))]
        probabilities = [positive_probability(self._diagnose(batch.mri, c)) for c in channels]
        synthetic = torch.stack([c.synthetic for c in channels if c.synthetic is not None]).mean(0)
        return Prediction(torch.stack(probabilities).mean(0), channels[0].sources, synthetic)
