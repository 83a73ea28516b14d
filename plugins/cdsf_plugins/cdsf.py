"""CDSF (Pan, Chen, Shen, Xia, MICCAI 2021): ISM and MDM trained collaboratively.

Notation: x is the MRI, y the real PET (present where m = 1), c the class, G the image
synthesis module (ISM), D the multi-modal diagnosis module (MDM) with logits D(x, p) and
L2-normalised features f(x, p), y_hat = G(x), P an optional patch critic. Every mean is over
the subjects named in brackets, across the whole batch (``context.mean``, exact under data
parallelism). Every weight can be 0, which removes its term (that is how ablations run).
"Labelled" excludes the training subjects whose label must not be used (``Batch.labelled``:
unlabelled subjects, and with ``data.synthesis_subjects = "all_diagnoses"`` those of the
other diagnoses): they train every term that needs no label and no term that does.

Reading (a), the default (``mdm_head = "class"``):

    L_D = w_cls_real  * CE(D(x, y), c)                     [labelled subjects with PET]
        + s * w_cls_synth * CE(D(x, sg(y_tilde)), c)       [labelled subjects; with
                                                            synthetic_pairs = "missing",
                                                            labelled subjects without PET]
    L_G = w_voxel     * |y_hat - y|_1                      [subjects with PET]
        + s * w_feature * ||f(x, y_hat) - f(x, y)||^2      [subjects with PET]
        + s * w_diag    * CE(D(x, y_hat), c)               [labelled subjects; 0 by default]
        + s * w_adv     * BCE(P(x, y_hat), 1)              [all subjects; 0 by default]

y_tilde, the synthetic PET D learns from, is y_hat, except with ``synthetic_pairs =
"cross_fitted"``: two generators G_A and G_B, each trained (every L_G term) on the subjects
of its own half of the cohort (a fixed hash of the subject's row) and y_tilde = the other
half's generator, in evaluation mode, so that D learns from synthetic PET made as a test
subject's is, by a generator that never saw that subject's PET or label. A prediction
averages D's probability over the two generators' y_hat (both are out of fold for a
validation or test subject), and the synthetic PET it reports is their mean.

Reading (b) (``mdm_head = "class_source"``, AC-GAN-like): D has 2K outputs indexed by
(class, source), source 0 = real, 1 = synthetic; D learns CE(D(x, y), (c, real)) and
CE(D(x, sg(y_hat)), (c, synthetic)); G's diagnostic term becomes CE(D(x, y_hat), (c, real)).
Class probabilities marginalise the source.

D's two terms are computed in one forward of the real and synthetic pairs together, so batch
norm normalises them as it will at test time, where real and synthetic pairs meet; a forward
that would give batch norm a single subject is skipped (``skipped_single`` in the history).
G then learns from D frozen: evaluation mode and no gradient, so D's running statistics do
not move, f(x, y_hat) and f(x, y) are normalised alike (the feature term is exactly 0 for
y_hat = y), and L_G moves G alone. ``s`` is the warm-up share: 0 for ``warmup_epochs``, then
rising to 1 over ``ramp_epochs`` (1 throughout by default). With ``w_adv`` > 0, P learns the
pix2pix loss on subjects with PET between D's step and G's (the same critic as the
decoupled baseline's). ``w_diag`` is 0 by default: its gradient carries every training
subject's label into y_hat, which D then learns to read, and a test subject's y_hat carries
no such code (docs/methods.md). A synthesiser with its own objective (``training_loss``,
the diffusion synthesiser's noise-prediction MSE) adds it to L_G, unweighted, over subjects
with PET (``own``); y_hat is then its training-mode output (the diffusion synthesiser's
one-step estimate of the clean PET). Prediction uses the real PET where it exists
(``predict_with = "real"``) and the synthetic PET otherwise; ``"synthetic"`` uses y_hat for
everyone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from cdsf_bench import Batch, Coupling, Prediction, TrainingContext, TrainingStage
from cdsf_bench.interfaces import DiagnoserFactory, DiagnoserOutput, SynthesiserFactory
from cdsf_plugins.common import (
    PREDICT_WITH,
    SYNTHETIC_PAIRS,
    AdversarialCritic,
    check_choice,
    cohort_halves,
    diagnose,
    diagnoser_optimiser,
    fill_pet,
    frozen,
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

MDM_HEADS = ("class", "class_source")


class JointCoupling(Coupling):
    """ISM and MDM trained together in one stage (the CDSF method)."""

    needs_synthesiser = True

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
        *,
        w_voxel: float = 10.0,
        w_feature: float = 1.0,
        w_diag: float = 0.0,
        w_cls_real: float = 1.0,
        w_cls_synth: float = 1.0,
        w_adv: float = 0.0,
        mdm_head: str = "class",
        synthetic_pairs: str = "all",
        predict_with: str = "real",
        synthesiser_lr_factor: float = 0.2,
        weight_decay: float = 1e-4,
        warmup_epochs: int = 0,
        ramp_epochs: int = 0,
        critic_lr: float = 2e-4,
        critic_widths: tuple[int, ...] = (16, 32, 64),
        critic_norm: str = "instance",
        pet_indicator: bool = False,
    ) -> None:
        super().__init__(context, build_synthesiser, build_diagnoser)
        if build_synthesiser is None:
            raise ValueError("the joint coupling trains a synthesiser; choose one with --synth")
        check_choice("mdm_head", mdm_head, MDM_HEADS)
        check_choice("predict_with", predict_with, PREDICT_WITH)
        check_choice("synthetic_pairs", synthetic_pairs, SYNTHETIC_PAIRS)
        if warmup_epochs < 0 or ramp_epochs < 0:
            raise ValueError(
                f"warmup_epochs and ramp_epochs must be >= 0, got {warmup_epochs}, {ramp_epochs}"
            )
        self.weights = {
            "voxel": w_voxel,
            "feature": w_feature,
            "diag": w_diag,
            "cls_real": w_cls_real,
            "cls_synth": w_cls_synth,
            "adv": w_adv,
        }
        self.head = mdm_head
        self.synthetic_pairs = synthetic_pairs
        self.predict_with = predict_with
        self.pet_indicator = pet_indicator
        self.warmup_epochs, self.ramp_epochs = warmup_epochs, ramp_epochs
        #: the share of the collaborative terms in this epoch (begin_epoch sets it; 1 without warm-up)
        self.collaboration = 1.0
        self.synthesiser = build_synthesiser()
        outputs = context.num_classes * (2 if mdm_head == "class_source" else 1)
        self.diagnoser = build_diagnoser(2 + int(pet_indicator), outputs)
        self.batch_norm = has_batch_norm(self.diagnoser)
        #: one generator per half of the cohort under cross-fitting (built after D, so D
        #: starts from the same weights as in the other readings), else the one
        self.synthesisers = [self.synthesiser]
        if synthetic_pairs == "cross_fitted":
            self.synthesisers.append(build_synthesiser())
        #: the synthesiser brings its own objective (``training_loss``), added to L_G
        self.own_objective = has_own_objective(self.synthesiser)
        lr = context.learning_rate
        self.optimise_synthesiser = torch.optim.Adam(
            [p for g in self.synthesisers for p in g.parameters()],
            lr=lr * synthesiser_lr_factor,
            betas=(0.5, 0.999),
        )
        self.optimise_diagnoser = diagnoser_optimiser(self.diagnoser, context, weight_decay)
        self.critic = None
        if w_adv:
            network = patch_critic(context, self.synthesiser, critic_widths, critic_norm)
            self.critic = AdversarialCritic(context, network, critic_lr)

    def modules(self) -> dict[str, torch.nn.Module]:
        networks = {"synthesiser": self.synthesiser, "diagnoser": self.diagnoser}
        if len(self.synthesisers) > 1:
            networks["synthesiser_b"] = self.synthesisers[1]
        return networks if self.critic is None else {**networks, "critic": self.critic.network}

    def stages(self) -> list[TrainingStage]:
        optimisers: dict[str, torch.optim.Optimizer] = {
            "synthesiser": self.optimise_synthesiser,
            "diagnoser": self.optimise_diagnoser,
        }
        if self.critic is not None:
            optimisers["critic"] = self.critic.optimiser
        stage = selected_stage(self.context, "joint", self.modules(), optimisers, self.step)
        stage.begin_epoch = self.begin_epoch
        stage.labels = "where_known"  # unlabelled subjects train the terms without a label
        return [stage]

    def begin_epoch(self, epoch: int) -> None:
        """Warm-up: G learns from the voxel loss alone, then the collaborative terms ramp in.

        The share is 0 for the first ``warmup_epochs`` epochs, then rises linearly to 1 over
        ``ramp_epochs`` epochs (at once without a ramp).
        """
        if epoch < self.warmup_epochs:
            self.collaboration = 0.0
        else:
            self.collaboration = min(1.0, (epoch - self.warmup_epochs + 1) / (self.ramp_epochs + 1))

    def _target(self, label: Tensor, synthetic: bool) -> Tensor:
        """The class index, or under reading (b) the (class, source) index."""
        return label * 2 + int(synthetic) if self.head == "class_source" else label

    def _diagnose(self, mri: Tensor, pet: Tensor, acquired: Tensor | None = None) -> DiagnoserOutput:
        """D(x, p); under ``pet_indicator`` ``acquired`` says which subjects' p is their acquired PET."""
        return diagnose(self.diagnoser, self.context, mri, pet, acquired if self.pet_indicator else None)

    def diagnoser_loss(self, batch: Batch, synthetic: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_D: the diagnosis learnt from real pairs and (detached) synthetic pairs, in one forward.

        Real and synthetic pairs are normalised together, as they are met at test time; a
        forward that would hand batch norm a single subject is skipped (``skipped_single``).
        """
        w, real, labelled = self.weights, batch.has_pet, batch.labelled
        w_synth = w["cls_synth"] * self.collaboration
        synth = ~real if self.synthetic_pairs == "missing" else torch.ones_like(real)
        take_real = real & labelled & bool(w["cls_real"])
        take_synth = synth & labelled & bool(w_synth)
        mri = torch.cat([batch.mri[take_real], batch.mri[take_synth]])
        pet = torch.cat([batch.pet[take_real], synthetic.detach()[take_synth].to(batch.pet.dtype)])
        target = torch.cat(
            [self._target(batch.label[take_real], False), self._target(batch.label[take_synth], True)]
        )
        skipped = len(mri) == 1 and self.batch_norm
        losses = mri.new_zeros(0)
        n_real = int(take_real.sum())
        if len(mri) and not skipped:
            acquired = torch.arange(len(mri), device=mri.device) < n_real
            logits = self._diagnose(mri, pet, acquired).logits.float()
            losses = F.cross_entropy(logits, target, reduction="none")
        terms = {
            "cls_real": self.context.mean(losses[:n_real]),
            "cls_synth": self.context.mean(losses[n_real:]),
            "skipped_single": torch.tensor(float(skipped)),
        }
        return w["cls_real"] * terms["cls_real"] + w_synth * terms["cls_synth"], terms

    def synthesiser_loss(self, batch: Batch, synthetic: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_G: voxel and feature consistency with real PET, MDM's diagnostic and P's adversarial signal.

        D (and P) are frozen here: evaluation mode, no gradient, running statistics untouched,
        so f(x, y_hat) and f(x, y) are normalised alike and the feature term is 0 for y_hat = y.
        """
        w, real, share = self.weights, batch.has_pet, self.collaboration
        zero = torch.zeros((), device=batch.mri.device)
        voxel = (synthetic.float() - batch.pet).abs().flatten(1).mean(dim=1)
        terms = {"voxel": self.context.mean(voxel[real]), "feature": zero, "diag": zero, "adv": zero}
        if share and (w["feature"] or w["diag"]):
            imputed = torch.zeros_like(real)  # y_hat, and y beside it, read as D reads y_hat
            with frozen(self.diagnoser):
                fake = self._diagnose(batch.mri, synthetic, imputed)
                if w["diag"]:
                    labelled = batch.labelled
                    target = self._target(batch.label[labelled], False)
                    terms["diag"] = self.context.mean(
                        F.cross_entropy(fake.logits[labelled].float(), target, reduction="none")
                    )
                if w["feature"]:
                    with torch.no_grad():
                        aim = self._diagnose(batch.mri, batch.pet, imputed).features.float()
                    distance = (fake.features.float() - aim).pow(2).sum(dim=1)
                    terms["feature"] = self.context.mean(distance[real])
        if share and self.critic is not None:
            terms["adv"] = self.critic.fooling(batch.mri, synthetic)
        collaborative = w["feature"] * terms["feature"] + w["diag"] * terms["diag"] + w["adv"] * terms["adv"]
        loss = w["voxel"] * terms["voxel"] + share * collaborative
        if self.own_objective:
            terms["own"] = self.context.mean(self._own_losses(batch))
            loss = loss + terms["own"]
        return loss, terms

    def _own_losses(self, batch: Batch) -> Tensor:
        """Each subject with PET's loss under its own generator's own objective (``training_loss``)."""
        real = batch.has_pet
        if len(self.synthesisers) == 1:
            return own_objective(self.synthesiser, self.context, batch.mri[real], batch.pet[real])
        half = cohort_halves(batch)[real]
        return own_objective_by_half(self.synthesisers, self.context, batch.mri[real], batch.pet[real], half)

    def synthesise(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """y_hat, from each subject's own generator (with gradient), and y_tilde for D's pairs.

        Without cross-fitting both are G(x). With it, y_hat comes from the generator of the
        subject's half (``common.cohort_halves``) and y_tilde from the other half's, frozen
        and without gradient.
        """
        if len(self.synthesisers) == 1:
            with self.context.autocast():
                synthetic = self.synthesiser(batch.mri)
            return synthetic, synthetic
        half = cohort_halves(batch)
        own = through_halves(self.synthesisers, self.context, batch.mri, half, grad=True)
        other = through_halves(self.synthesisers, self.context, batch.mri, 1 - half, grad=False)
        return own, other

    def step(self, batch: Batch) -> Mapping[str, Tensor]:
        """One collaborative update: D on real and synthetic pairs, P if adversarial, then G."""
        synthetic, pairs = self.synthesise(batch)
        loss_d, terms_d = self.diagnoser_loss(batch, pairs)
        # step() runs even without a gradient (a no-op then), so every process of a
        # distributed run takes the same steps
        self.optimise_diagnoser.zero_grad(set_to_none=True)
        if loss_d.requires_grad:
            loss_d.backward()
        self.optimise_diagnoser.step()
        critic = {}
        if self.critic is not None:
            real = batch.has_pet
            critic["P"] = self.critic.learn(batch.mri[real], batch.pet[real], synthetic[real])
        loss_g, terms_g = self.synthesiser_loss(batch, synthetic)
        self.optimise_synthesiser.zero_grad(set_to_none=True)
        if loss_g.requires_grad:
            loss_g.backward()
        self.optimise_synthesiser.step()
        losses = {"D": loss_d, "G": loss_g, **terms_d, **critic, **terms_g}
        return {key: value.detach() for key, value in losses.items()}

    def predict(self, batch: Batch) -> Prediction:
        """D on real PET where used, else on y_hat; averaged over the generators under cross-fitting."""
        probabilities, synthetics = [], []
        use_real = real_where(batch, self.predict_with)
        for generator in self.synthesisers:
            with self.context.autocast():
                synthetic = generator(batch.mri).float()
            pet, sources = fill_pet(batch, use_real, synthetic, "synthetic")
            logits = self._diagnose(batch.mri, pet, use_real).logits
            probabilities.append(positive_probability(logits, self.head))
            synthetics.append(synthetic)
        if len(self.synthesisers) == 1:
            return Prediction(probabilities[0], sources, synthetics[0])
        return Prediction(torch.stack(probabilities).mean(0), sources, torch.stack(synthetics).mean(0))
