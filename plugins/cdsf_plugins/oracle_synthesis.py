"""The oracle synthesiser's reference row: missing PET replaced by a perfect generator's output.

Notation as in baselines.py (x the MRI, y the real PET where m = 1), with e = E[y | x], the
PET that a perfect generator could make of what the MRI shows (known only on the phantom,
``Batch.pet_expected``). The diagnoser reads

    p = m * y + (1 - m) * e     in training, validation and test  (pet_source "real" / "synthetic")

and is trained as every diagnosis-only baseline is, L_D = CE(D(x, p), c). It is mean-impute
with the mean replaced by the best prediction any synthesiser can make from the MRI, so no
imputing synthesiser can add more in a scenario than this row does over MRI alone: its gain
bounds theirs. Where e equals the real PET of every subject (a phantom whose PET has no term
that the MRI does not show), its inputs are the oracle's. A prediction returns e for every
subject as its synthetic PET, so synthesis is scored as a perfect generator's would be.
"""

from __future__ import annotations

from cdsf_bench import Batch
from cdsf_bench.errors import InputError
from cdsf_plugins.baselines import DiagnosisCoupling, PetChannel
from cdsf_plugins.common import fill_pet


class OracleSynthesis(DiagnosisCoupling):
    """Real PET where acquired, E[PET | MRI] elsewhere: the ceiling of imputing synthesis."""

    needs_pet_expected = True

    def pet_channel(self, batch: Batch, training: bool) -> PetChannel:
        expected = batch.pet_expected
        if expected is None:
            raise InputError(
                "The oracle synthesiser needs E[PET | MRI] for every subject (pet_expected), which "
                "this data does not have; only the phantom knows it."
            )
        pet, sources = fill_pet(batch, batch.has_pet, expected, "synthetic")
        return PetChannel(pet, sources, expected)
