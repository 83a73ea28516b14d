"""CDSF (Pan, Chen, Shen, Xia, MICCAI 2021): ISM and MDM trained collaboratively.

Notation: x is the MRI, y the real PET (present where m = 1), c the class, G the image
synthesis module (ISM), D the multi-modal diagnosis module (MDM) with logits D(x, p) and
L2-normalised features f(x, p), and y_hat = G(x). Masked means average over subjects with
real PET only. Every weight can be 0, which removes its term (that is how ablations run).

Reading (a), the default (``mdm_head = "class"``):

    L_D = w_cls_real  * CE(D(x, y), c)                     [subjects with PET]
        + w_cls_synth * CE(D(x, sg(y_hat)), c)             [all subjects; with
                                                            synthetic_pairs = "missing",
                                                            subjects without PET only]
    L_G = w_voxel     * |y_hat - y|_1                      [subjects with PET]
        + w_feature   * ||f(x, y_hat) - sg(f(x, y))||^2    [subjects with PET]
        + w_diag      * CE(D(x, y_hat), c)                 [all subjects]

Reading (b) (``mdm_head = "class_source"``, AC-GAN-like): D has 2K outputs indexed by
(class, source), source 0 = real, 1 = synthetic; D learns CE(D(x, y), (c, real)) and
CE(D(x, sg(y_hat)), (c, synthetic)); G's diagnostic term becomes CE(D(x, y_hat), (c, real)),
so G must make PET that D takes for real PET of the right class. Class probabilities
marginalise the source.

sg() stops gradients. D is updated on L_D with its own optimiser, then G on L_G; D's
parameters are frozen during G's backward so L_G moves only G. Prediction uses the real
PET where it exists (``predict_with = "real"``) and the synthetic PET otherwise; with
``predict_with = "synthetic"`` every subject uses synthetic PET. docs/methods.md explains
which parts are the paper's and which are our reading.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from cdsf_bench import Batch, Component, Coupling, Prediction, TrainingContext, TrainingStage, hookimpl
from cdsf_bench.interfaces import DiagnoserOutput, Method, MethodDefaults
from cdsf_plugins.common import (
    PREDICT_WITH,
    check_choice,
    diagnose,
    diagnoser_optimiser,
    fill_pet,
    masked_mean,
    positive_probability,
    real_where,
    selected_stage,
)
from cdsf_plugins.ism import ISM
from cdsf_plugins.mdm import MDM

SYNTHETIC_PAIRS = ("all", "missing")
MDM_HEADS = ("class", "class_source")


class JointCoupling(Coupling):
    """ISM and MDM trained together in one stage (the CDSF method)."""

    needs_synthesiser = True

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser,
        build_diagnoser,
        *,
        w_voxel: float = 10.0,
        w_feature: float = 1.0,
        w_diag: float = 0.1,
        w_cls_real: float = 1.0,
        w_cls_synth: float = 1.0,
        mdm_head: str = "class",
        synthetic_pairs: str = "all",
        predict_with: str = "real",
        synthesiser_lr_factor: float = 0.2,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__(context, build_synthesiser, build_diagnoser)
        check_choice("mdm_head", mdm_head, MDM_HEADS)
        check_choice("predict_with", predict_with, PREDICT_WITH)
        check_choice("synthetic_pairs", synthetic_pairs, SYNTHETIC_PAIRS)
        self.weights = {
            "voxel": w_voxel,
            "feature": w_feature,
            "diag": w_diag,
            "cls_real": w_cls_real,
            "cls_synth": w_cls_synth,
        }
        self.head = mdm_head
        self.synthetic_pairs = synthetic_pairs
        self.predict_with = predict_with
        self.synthesiser = build_synthesiser()
        outputs = context.num_classes * (2 if mdm_head == "class_source" else 1)
        self.diagnoser = build_diagnoser(2, outputs)
        lr = context.learning_rate
        self.optimise_synthesiser = torch.optim.Adam(
            self.synthesiser.parameters(), lr=lr * synthesiser_lr_factor, betas=(0.5, 0.999)
        )
        self.optimise_diagnoser = diagnoser_optimiser(self.diagnoser, context, weight_decay)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"synthesiser": self.synthesiser, "diagnoser": self.diagnoser}

    def stages(self) -> list[TrainingStage]:
        return [
            selected_stage(
                self.context,
                "joint",
                {"synthesiser": self.synthesiser, "diagnoser": self.diagnoser},
                {"synthesiser": self.optimise_synthesiser, "diagnoser": self.optimise_diagnoser},
                self.step,
            )
        ]

    def _target(self, label: Tensor, synthetic: bool) -> Tensor:
        """The class index, or under reading (b) the (class, source) index."""
        return label * 2 + int(synthetic) if self.head == "class_source" else label

    def _diagnose(self, mri: Tensor, pet: Tensor) -> DiagnoserOutput:
        return diagnose(self.diagnoser, self.context, mri, pet)

    def diagnoser_loss(self, batch: Batch, synthetic: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_D: the diagnosis learnt from real pairs and from (detached) synthetic pairs."""
        w = self.weights
        real = batch.has_pet
        zero = torch.zeros((), device=batch.mri.device)
        terms = {"cls_real": zero, "cls_synth": zero}
        if w["cls_real"] and real.any():
            out = self._diagnose(batch.mri[real], batch.pet[real])
            terms["cls_real"] = F.cross_entropy(out.logits.float(), self._target(batch.label[real], False))
        synth = torch.ones_like(real) if self.synthetic_pairs == "all" else ~real
        if w["cls_synth"] and synth.any():
            out = self._diagnose(batch.mri[synth], synthetic.detach()[synth])
            terms["cls_synth"] = F.cross_entropy(out.logits.float(), self._target(batch.label[synth], True))
        return w["cls_real"] * terms["cls_real"] + w["cls_synth"] * terms["cls_synth"], terms

    def synthesiser_loss(self, batch: Batch, synthetic: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_G: voxel and feature consistency with real PET, and MDM's diagnostic signal."""
        w = self.weights
        real = batch.has_pet
        zero = torch.zeros((), device=batch.mri.device)
        voxel = (synthetic.float() - batch.pet).abs().flatten(1).mean(dim=1)
        terms = {"voxel": masked_mean(voxel, real), "feature": zero, "diag": zero}
        if w["feature"] or w["diag"]:
            out_fake = self._diagnose(batch.mri, synthetic)
            if w["diag"]:
                terms["diag"] = F.cross_entropy(out_fake.logits.float(), self._target(batch.label, False))
            if w["feature"] and real.any():
                with torch.no_grad():
                    target = self._diagnose(batch.mri[real], batch.pet[real]).features.float()
                distance = (out_fake.features.float()[real] - target).pow(2).sum(dim=1)
                terms["feature"] = distance.mean()
        total = w["voxel"] * terms["voxel"] + w["feature"] * terms["feature"] + w["diag"] * terms["diag"]
        return total, terms

    def step(self, batch: Batch) -> Mapping[str, Tensor]:
        """One collaborative update: D on real and synthetic pairs, then G under D's supervision."""
        with self.context.autocast():
            synthetic = self.synthesiser(batch.mri)
        loss_d, terms_d = self.diagnoser_loss(batch, synthetic)
        # step() runs even without a gradient (a no-op then), so every process of a
        # distributed run takes the same steps
        self.optimise_diagnoser.zero_grad(set_to_none=True)
        if loss_d.requires_grad:
            loss_d.backward()
        self.optimise_diagnoser.step()
        # D is frozen while G learns from it, so L_G moves G alone
        self.diagnoser.requires_grad_(False)
        try:
            loss_g, terms_g = self.synthesiser_loss(batch, synthetic)
            self.optimise_synthesiser.zero_grad(set_to_none=True)
            if loss_g.requires_grad:
                loss_g.backward()
            self.optimise_synthesiser.step()
        finally:
            self.diagnoser.requires_grad_(True)
        return {"D": loss_d, "G": loss_g, **terms_d, **terms_g}

    def predict(self, batch: Batch) -> Prediction:
        with self.context.autocast():
            synthetic = self.synthesiser(batch.mri).float()
        pet, sources = fill_pet(batch, real_where(batch, self.predict_with), synthetic, "synthetic")
        logits = self._diagnose(batch.mri, pet).logits
        return Prediction(positive_probability(logits, self.head), sources, synthetic)


@hookimpl
def cdsf_bench_synthesisers() -> list[Component]:
    return [Component("ism", ISM, "CDSF image synthesis module: 3D ResNet generator, MRI to PET")]


@hookimpl
def cdsf_bench_diagnosers() -> list[Component]:
    return [
        Component("mdm", MDM, "CDSF multi-modal diagnosis module: 3D CNN with L2-normalised spatial features")
    ]


@hookimpl
def cdsf_bench_couplings() -> list[Component]:
    return [Component("joint", JointCoupling, "CDSF collaborative training of synthesiser and diagnoser")]


@hookimpl
def cdsf_bench_defaults() -> MethodDefaults:
    """CDSF is what the benchmark is about: the default run and every report's reference."""
    return MethodDefaults(
        method=Method(synth="ism", diag="mdm", coupling="joint"), mri_only_coupling="single"
    )
