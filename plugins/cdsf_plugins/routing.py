"""The routing baseline: real PET where it was acquired, and no imputed PET anywhere.

What a clinician does who does not trust imputed PET: a subject scanned with PET is diagnosed
by a multi-modal diagnoser D_mm(x, y), every other subject by an MRI-only diagnoser D_mri(x).
Nothing is synthesised or imputed, so beside CDSF, the two-stage pipeline and mean imputation
it says what synthesis adds beyond not reading an imputed PET channel at all (issue 36).
Notation as in baselines.py.

    stage "mri_only"    L = CE(D_mri(x), c)        [every labelled training subject]
    stage "multimodal"  L = CE(D_mm(x, y), c)      [the labelled training subjects with PET]
    prediction          P(positive) = softmax(D_mm(x, y))_1 where PET was acquired,
                                      softmax(D_mri(x))_1 elsewhere

The branches are the ``single`` and ``complete-case`` baselines' diagnosers (built and trained
by those couplings' own code, MRI-only first), and each stage selects on validation:

- ``mri_only`` on the MRI-only prediction of every validation subject, exactly as the
  ``single`` baseline selects. So the MRI-only branch is that baseline's model, bit for bit
  with the same seed: a routing run's predictions for subjects without PET are the MRI-only
  row's, and a paired comparison of the two differs only where PET was acquired. Selecting
  it on the validation subjects without PET alone would choose on half the subjects for no
  gain (an MRI-only model reads the same input from both halves).
- ``multimodal`` on the routed prediction of every validation subject, the MRI-only branch
  fixed. The routed prediction is what the test scores: its AUC ranks subjects of one branch
  against those of the other, so the multi-modal epoch is chosen for how its probabilities
  sit beside the MRI-only ones, as every other coupling is chosen on its whole prediction.
  Selecting it on the validation subjects with PET alone would ignore that mixing.

Which branch a validation is made with follows the stage being trained (its ``begin_epoch``);
a coupling outside training (the final test, ``cdsf-bench predict``) routes.
"""

from __future__ import annotations

import torch

from cdsf_bench import Batch, Coupling, Prediction, TrainingContext, TrainingStage
from cdsf_bench.interfaces import DiagnoserFactory, PetSource, SynthesiserFactory
from cdsf_plugins.baselines import CompleteCase, SingleModality


class RoutingCoupling(Coupling):
    """D_mm on real PET where acquired, D_mri on the MRI everywhere else (``--synth none``)."""

    needs_synthesiser = False

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
        *,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__(context, build_synthesiser, build_diagnoser)
        # the MRI-only branch first: it starts from the weights the single baseline starts from
        self.mri_only = SingleModality(context, None, build_diagnoser, weight_decay=weight_decay)
        self.multimodal = CompleteCase(context, None, build_diagnoser, weight_decay=weight_decay)
        #: whether predictions route (False while the MRI-only branch is being selected)
        self.routed = True

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"mri_only": self.mri_only.diagnoser, "multimodal": self.multimodal.diagnoser}

    def stages(self) -> list[TrainingStage]:
        (mri_only,) = self.mri_only.stages()
        (multimodal,) = self.multimodal.stages()
        mri_only.name, multimodal.name = "mri_only", "multimodal"
        mri_only.modules = {"mri_only": self.mri_only.diagnoser}
        multimodal.modules = {"multimodal": self.multimodal.diagnoser}
        mri_only.begin_epoch = self._select_mri_only
        multimodal.begin_epoch = self._select_multimodal
        return [mri_only, multimodal]

    def _select_mri_only(self, epoch: int) -> None:
        """The MRI-only stage: every validation subject is predicted by D_mri."""
        self.routed = False

    def _select_multimodal(self, epoch: int) -> None:
        """The multi-modal stage: validation routes, as the test will."""
        self.routed = True

    def predict(self, batch: Batch) -> Prediction:
        """D_mm where PET was acquired (once the MRI-only branch is selected), else D_mri."""
        probability = self.mri_only.predict(batch).probability
        sources: list[PetSource] = ["none"] * len(batch)
        acquired = batch.has_pet if self.routed else torch.zeros_like(batch.has_pet)
        if bool(acquired.any()):
            probability = probability.clone()
            probability[acquired] = self.multimodal.predict(batch.take(acquired)).probability
            sources = ["real" if bool(a) else "none" for a in acquired.tolist()]
        return Prediction(probability, sources)
