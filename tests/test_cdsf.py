"""The joint coupling's losses: every term reaches the module it should, and a weight of 0 removes it."""

from __future__ import annotations

import copy

import pytest
import torch
from support import training_context

from cdsf_bench.interfaces import Batch
from cdsf_plugins.cdsf import JointCoupling, positive_probability
from cdsf_plugins.ism import ISM
from cdsf_plugins.mdm import MDM

SHAPE = (16, 20, 16)


def _coupling(diag_norm: str = "batch", **weights) -> JointCoupling:
    torch.manual_seed(0)
    context = training_context(SHAPE)
    return JointCoupling(
        context,
        lambda: ISM(widths=(4, 8, 8), n_residual=1),
        lambda channels, classes=None: MDM(
            channels, SHAPE, classes or 2, widths=(4, 8, 8, 8, 8), norm=diag_norm
        ),
        **weights,
    )


def _batch() -> Batch:
    torch.manual_seed(1)
    return Batch(
        mri=torch.rand(4, 1, *SHAPE) * 2 - 1,
        pet=torch.rand(4, 1, *SHAPE) * 2 - 1,
        has_pet=torch.tensor([True, True, False, True]),
        label=torch.tensor([0, 1, 1, 0]),
        index=torch.arange(4),
    )


def _synth_grad(coupling: JointCoupling, batch: Batch, term: str | None = None) -> tuple[float, torch.Tensor]:
    coupling.synthesiser.zero_grad()
    synthetic = coupling.synthesiser(batch.mri)
    total, terms = coupling.synthesiser_loss(batch, synthetic)
    loss = total if term is None else terms[term]
    loss.backward()
    loss = loss.detach()
    grad = torch.cat([p.grad.flatten() for p in coupling.synthesiser.parameters() if p.grad is not None])
    return float(loss), grad


def test_feature_consistency_gradient_reaches_the_synthesiser():
    coupling = _coupling(w_voxel=0.0, w_diag=0.0, w_feature=1.0)
    loss, grad = _synth_grad(coupling, _batch(), "feature")
    assert loss > 0
    assert grad.abs().sum() > 0


#: every term of L_G switched on (the defaults leave w_diag and w_adv at 0)
EVERY_TERM = {"w_diag": 0.1, "w_adv": 1.0}


@pytest.mark.parametrize("term", ["voxel", "feature", "diag", "adv"])
def test_zero_weight_removes_a_synthesiser_term(term: str):
    batch = _batch()
    full_loss, full_grad = _synth_grad(_coupling(**EVERY_TERM), batch)
    ablated_loss, ablated_grad = _synth_grad(_coupling(**{**EVERY_TERM, f"w_{term}": 0.0}), batch)
    assert ablated_loss != pytest.approx(full_loss)
    assert not torch.allclose(full_grad, ablated_grad)
    coupling = _coupling(**{**EVERY_TERM, f"w_{term}": 0.0})
    total, terms = coupling.synthesiser_loss(batch, coupling.synthesiser(batch.mri))
    kept = sum(coupling.weights[k] * float(v.detach()) for k, v in terms.items() if k != term)
    assert float(total) == pytest.approx(kept, rel=1e-5)


@pytest.mark.parametrize("term", ["cls_real", "cls_synth"])
def test_zero_weight_removes_a_diagnoser_term(term: str):
    batch = _batch()

    def diag_loss(coupling: JointCoupling) -> tuple[float, torch.Tensor]:
        coupling.diagnoser.zero_grad()
        total, _ = coupling.diagnoser_loss(batch, coupling.synthesiser(batch.mri))
        total.backward()
        return float(total), torch.cat([p.grad.flatten() for p in coupling.diagnoser.parameters()])

    full_loss, full_grad = diag_loss(_coupling())
    ablated_loss, ablated_grad = diag_loss(_coupling(**{f"w_{term}": 0.0}))
    assert ablated_loss != pytest.approx(full_loss)
    assert not torch.allclose(full_grad, ablated_grad)


def test_synthesiser_loss_does_not_move_the_diagnoser():
    """After a joint step D's gradients are those of L_D alone: L_G's backward reached G only."""
    coupling = _coupling()
    reference = copy.deepcopy(coupling)
    batch = _batch()
    coupling.step(batch)
    with reference.context.autocast():
        synthetic = reference.synthesiser(batch.mri)
    loss_d, _ = reference.diagnoser_loss(batch, synthetic)
    loss_d.backward()
    pairs = list(zip(coupling.diagnoser.parameters(), reference.diagnoser.parameters(), strict=True))
    assert all(got.grad is not None for got, _ in pairs)
    assert all(torch.allclose(got.grad, want.grad, atol=1e-6) for got, want in pairs)
    assert all(p.requires_grad for p in coupling.diagnoser.parameters())


def test_voxel_loss_uses_only_subjects_with_pet():
    coupling = _coupling()
    batch = _batch()
    synthetic = coupling.synthesiser(batch.mri)
    _, terms = coupling.synthesiser_loss(batch, synthetic)
    real = batch.has_pet
    expected = (synthetic - batch.pet).abs()[real].flatten(1).mean(1).mean()
    assert float(terms["voxel"]) == pytest.approx(float(expected), rel=1e-5)


def test_prediction_uses_real_pet_where_present_and_synthetic_elsewhere():
    coupling = _coupling()
    coupling.synthesiser.eval()
    coupling.diagnoser.eval()
    with torch.no_grad():
        prediction = coupling.predict(_batch())
    assert prediction.pet_source == ["real", "real", "synthetic", "real"]
    assert prediction.synthetic.shape == (4, 1, *SHAPE)
    assert torch.all((prediction.probability >= 0) & (prediction.probability <= 1))
    always_synthetic = _coupling(predict_with="synthetic")
    always_synthetic.synthesiser.eval()
    always_synthetic.diagnoser.eval()
    with torch.no_grad():
        assert always_synthetic.predict(_batch()).pet_source == ["synthetic"] * 4


def test_reading_b_has_a_class_by_source_head_and_marginal_probabilities():
    coupling = _coupling(mdm_head="class_source")
    assert coupling.diagnoser.classifier.out_features == 4
    loss = coupling.step(_batch())
    assert all(torch.isfinite(v) for v in loss.values())
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    assert float(positive_probability(logits, "class_source")) == pytest.approx(0.5)


def test_context_mean_is_the_batch_mean_and_zero_without_subjects():
    context = _coupling().context
    assert float(context.mean(torch.zeros(0))) == 0.0
    assert float(context.mean(torch.tensor([1.0, 3.0]))) == 2.0


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="mdm_head"):
        _coupling(mdm_head="nope")


def test_synthetic_pairs_missing_uses_only_subjects_without_pet():
    batch = _batch()
    coupling = _coupling(diag_norm="group", synthetic_pairs="missing", w_cls_real=0.0)
    synthetic = coupling.synthesiser(batch.mri)
    _, terms = coupling.diagnoser_loss(batch, synthetic)
    missing = ~batch.has_pet
    expected = torch.nn.functional.cross_entropy(
        coupling._diagnose(batch.mri[missing], synthetic.detach()[missing]).logits.float(),
        batch.label[missing],
    )
    assert float(terms["cls_synth"]) == pytest.approx(float(expected), rel=1e-4)
    everyone = _coupling(diag_norm="group", synthetic_pairs="all", w_cls_real=0.0)
    assert float(everyone.diagnoser_loss(batch, synthetic)[1]["cls_synth"]) != pytest.approx(float(expected))


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_feature_consistency_is_zero_for_a_perfect_generator(norm: str):
    """y_hat = y gives a feature term of exactly 0, whatever the diagnoser normalises with."""
    coupling = _coupling(diag_norm=norm)
    batch = _batch()
    coupling.step(batch)  # D has learnt a step and its running statistics have moved
    _, terms = coupling.synthesiser_loss(batch, batch.pet.clone())
    assert float(terms["feature"]) == 0.0
    assert float(terms["voxel"]) == 0.0


def test_the_synthesiser_step_leaves_the_diagnosers_statistics_and_weights_alone():
    coupling = _coupling(w_diag=0.1)
    batch = _batch()
    synthetic = coupling.synthesiser(batch.mri)
    before = copy.deepcopy(coupling.diagnoser.state_dict())
    loss, _ = coupling.synthesiser_loss(batch, synthetic)
    loss.backward()
    after = coupling.diagnoser.state_dict()
    assert any("running_mean" in key for key in before)
    assert all(torch.equal(before[key], after[key]) for key in before)  # buffers and weights
    assert coupling.diagnoser.training  # restored for the next step
    assert all(p.grad is None for p in coupling.diagnoser.parameters())


def test_no_batch_norm_training_forward_sees_one_subject():
    """The joint step never hands a batch-norm layer in training mode a single subject."""
    seen: list[int] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            seen.append(int(inputs[0].shape[0]))

    for pairs, has_pet in [
        ("all", [True, False, False, False]),
        ("missing", [True, True, True, False]),  # one synthetic pair and three real ones
        ("missing", [False, False, False, False]),
    ]:
        coupling = _coupling(synthetic_pairs=pairs, w_diag=0.1)
        for module in coupling.diagnoser.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.register_forward_pre_hook(record)
        batch = _batch()
        batch.has_pet = torch.tensor(has_pet)
        losses = coupling.step(batch)
        assert float(losses["skipped_single"]) == 0.0
    assert seen and min(seen) > 1
    lonely = _coupling(synthetic_pairs="missing", w_cls_real=0.0)  # D would see the one missing subject
    losses = lonely.step(_batch())
    assert float(losses["skipped_single"]) == 1.0 and float(losses["cls_synth"]) == 0.0


def test_warm_up_trains_the_generator_on_the_voxel_loss_first():
    coupling = _coupling(w_diag=0.1, warmup_epochs=2, ramp_epochs=2)
    shares = []
    for epoch in range(6):
        coupling.begin_epoch(epoch)
        shares.append(coupling.collaboration)
    assert shares == pytest.approx([0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0])
    coupling.begin_epoch(0)
    batch = _batch()
    total, terms = coupling.synthesiser_loss(batch, coupling.synthesiser(batch.mri))
    assert float(total) == pytest.approx(coupling.weights["voxel"] * float(terms["voxel"]))
    assert coupling.stages()[0].begin_epoch is not None
