"""The matched factorial's switches, the PET-acquired indicator and the routing baseline.

Each switch keeps its invariant: with pairs "missing" no training subject with PET gives D a
synthetic pair; cross-fitted pairs come from the generator that never trained on the subject;
the two-stage feature term is 0 for a perfect generator; the indicator is 1 exactly where D
reads acquired PET; routing predicts with D_mm where PET was acquired and D_mri elsewhere.
"""

from __future__ import annotations

import torch
from support import training_context

from cdsf_bench.interfaces import Batch
from cdsf_bench.testing import check_coupling
from cdsf_plugins.baselines import DecoupledCoupling, MeanImpute
from cdsf_plugins.cdsf import JointCoupling
from cdsf_plugins.common import cohort_halves, positive_probability
from cdsf_plugins.ism import ISM
from cdsf_plugins.mdm import MDM
from cdsf_plugins.routing import RoutingCoupling

SHAPE = (16, 20, 16)


def _diagnoser(channels: int, classes: int | None = None) -> MDM:
    return MDM(channels, SHAPE, classes or 2, widths=(4, 8, 8, 8, 8), norm="group")


def _decoupled(**settings: object) -> DecoupledCoupling:
    torch.manual_seed(0)
    return DecoupledCoupling(
        training_context(SHAPE),
        lambda: ISM(widths=(4, 8, 8), n_residual=1),
        _diagnoser,
        discriminator_widths=(4, 8),
        **settings,  # type: ignore[arg-type]
    )


def _batch(seed: int = 1) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    has_pet = torch.tensor([True, True, False, True, False, False])
    truth = torch.rand(6, 1, *SHAPE, generator=generator) * 2 - 1
    return Batch(
        mri=torch.rand(6, 1, *SHAPE, generator=generator) * 2 - 1,
        pet=truth * has_pet.view(-1, 1, 1, 1, 1),
        has_pet=has_pet,
        label=torch.tensor([0, 1, 1, 0, 0, 1]),
        index=torch.arange(6),
    )


def test_missing_pairs_give_no_subject_with_pet_a_synthetic_pair() -> None:
    batch = _batch()
    mri, channel, label = _decoupled().training_pairs(batch)
    assert len(mri) == len(batch) and torch.equal(label, batch.label)
    assert channel.sources == ["real" if bool(r) else "synthetic" for r in batch.has_pet]
    assert channel.pet is not None
    assert torch.equal(channel.pet[batch.has_pet], batch.pet[batch.has_pet])


def test_all_pairs_add_every_subjects_synthetic_pair_to_the_real_ones() -> None:
    batch = _batch()
    coupling = _decoupled(synthetic_pairs="all")
    mri, channel, label = coupling.training_pairs(batch)
    real = batch.has_pet
    n_real = int(real.sum())
    assert channel.sources == ["real"] * n_real + ["synthetic"] * len(batch)
    assert torch.equal(label, torch.cat([batch.label[real], batch.label]))
    with torch.no_grad():
        expected = coupling.synthesiser.eval()(batch.mri)
    assert channel.pet is not None
    assert torch.equal(channel.pet[:n_real], batch.pet[real])
    assert torch.allclose(channel.pet[n_real:], expected, atol=1e-6)


def test_cross_fitted_pairs_come_from_the_generator_that_never_trained_on_the_subject() -> None:
    batch = _batch()
    coupling = _decoupled(synthetic_pairs="cross_fitted")
    assert {"synthesiser", "synthesiser_b"} <= set(coupling.modules())
    half = cohort_halves(batch)
    assert 0 < int(half.sum()) < len(batch)
    _, channel, _ = coupling.training_pairs(batch)
    with torch.no_grad():
        outputs = [g.eval()(batch.mri) for g in coupling.synthesisers]
    assert channel.pet is not None
    synthetic = channel.pet[int(batch.has_pet.sum()) :]
    for i, own in enumerate(half.tolist()):
        assert torch.allclose(synthetic[i], outputs[1 - own][i], atol=1e-5)
    # and a generator learns from its own half alone: G_A's gradient ignores half B's PET
    with_pet = batch.take(slice(None))
    with_pet.pet, with_pet.has_pet = batch.mri.tanh(), torch.ones_like(batch.has_pet)
    flipped = with_pet.take(slice(None))
    flipped.pet = torch.where((half == 1).view(-1, 1, 1, 1, 1), -with_pet.pet, with_pet.pet)
    grads = []
    for which in (with_pet, flipped):
        model = _decoupled(synthetic_pairs="cross_fitted", w_adv=0.0)
        model.synthesis_step(which)
        grads.append([torch.cat([p.flatten() for p in g.parameters()]) for g in model.synthesisers])
    assert torch.equal(grads[0][0], grads[1][0]) and not torch.equal(grads[0][1], grads[1][1])


def test_the_two_stage_feature_term_is_zero_for_a_perfect_generator() -> None:
    coupling = _decoupled(w_feature=1.0, w_adv=0.0)
    assert coupling.features is not None and "feature_diagnoser" in coupling.modules()
    batch = _batch().take(_batch().has_pet)
    assert float(coupling.features.consistency(batch.mri, batch.pet, batch.pet)) == 0.0
    fake = coupling.synthesiser(batch.mri)
    assert float(coupling.features.consistency(batch.mri, fake, batch.pet).detach()) > 0.0
    (stage, _) = coupling.stages()
    assert stage.labels == "where_known"
    before = [p.detach().clone() for p in coupling.features.network.parameters()]
    losses = coupling.synthesis_step(batch)
    assert {"F", "feature", "l1"} <= set(losses)
    moved = [
        not torch.equal(b, p) for b, p in zip(before, coupling.features.network.parameters(), strict=True)
    ]
    assert any(moved)  # F learns in stage 1 (and G's term did not move it: it is frozen there)


def test_the_indicator_is_one_exactly_where_the_pet_is_acquired() -> None:
    batch = _batch()
    for coupling in (_decoupled(pet_indicator=True), _decoupled(synthetic_pairs="all", pet_indicator=True)):
        seen: list[torch.Tensor] = []
        coupling.diagnoser.register_forward_pre_hook(lambda _, args, seen=seen: seen.append(args[0]))
        mri, channel, _ = coupling.training_pairs(batch)
        coupling._diagnose(mri, channel)
        (inputs,) = seen
        assert inputs.shape[1] == 3
        acquired = torch.tensor([s == "real" for s in channel.sources])
        assert torch.equal(inputs[:, 2].flatten(1).amax(1), acquired.float())
        assert torch.equal(inputs[:, 2].flatten(1).amin(1), acquired.float())
    torch.manual_seed(0)
    mean = MeanImpute(training_context(SHAPE), None, _diagnoser, pet_indicator=True)
    assert next(mean.diagnoser.parameters()).shape[1] == 3
    torch.manual_seed(0)
    joint = JointCoupling(
        training_context(SHAPE), lambda: ISM(widths=(4, 8, 8), n_residual=1), _diagnoser, pet_indicator=True
    )
    synthetic = joint.synthesiser(batch.mri)
    assert float(joint.synthesiser_loss(batch, batch.pet.clone())[1]["feature"]) == 0.0
    assert torch.isfinite(joint.diagnoser_loss(batch, synthetic)[0])


def test_the_new_settings_pass_the_coupling_check() -> None:
    for settings in ({"synthetic_pairs": "all"}, {"synthetic_pairs": "cross_fitted"}, {"w_feature": 1.0}):
        check_coupling(DecoupledCoupling, **settings)
    check_coupling(DecoupledCoupling, pet_indicator=True)
    check_coupling(JointCoupling, pet_indicator=True)
    check_coupling(MeanImpute, pet_indicator=True)
    check_coupling(RoutingCoupling)


def test_routing_predicts_with_real_pet_where_acquired_and_mri_alone_elsewhere() -> None:
    torch.manual_seed(0)
    coupling = RoutingCoupling(training_context(SHAPE), None, _diagnoser)
    stages = coupling.stages()
    assert [(s.name, s.subjects) for s in stages] == [("mri_only", "all"), ("multimodal", "with_pet")]
    batch = _batch()
    for module in coupling.modules().values():
        module.eval()
    with torch.no_grad():
        mri_only = positive_probability(coupling.mri_only.diagnoser(batch.mri).logits)
        multimodal = positive_probability(
            coupling.multimodal.diagnoser(torch.cat([batch.mri, batch.pet], dim=1)).logits
        )
        assert stages[0].begin_epoch is not None and stages[1].begin_epoch is not None
        stages[0].begin_epoch(0)  # selecting D_mri: every subject is predicted by it
        selecting = coupling.predict(batch)
        stages[1].begin_epoch(0)
        routed = coupling.predict(batch)
    assert torch.allclose(selecting.probability, mri_only) and selecting.pet_source == ["none"] * 6
    real = batch.has_pet
    assert torch.allclose(routed.probability[real], multimodal[real], atol=1e-6)
    assert torch.equal(routed.probability[~real], mri_only[~real])
    assert routed.pet_source == ["real" if bool(r) else "none" for r in real]
