"""The couplings and subjects whose labels must not be used; CDSF's cross-fitted synthetic pairs.

An unlabelled training subject (``Batch.labelled`` False, label -1) must train every term
that needs no label and none that does: D learns nothing from it, G learns from its PET.
Under cross-fitting, a generator learns from its own half of the cohort alone, and D's
synthetic pairs come from the generator that never saw the subject.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from support import training_context

from cdsf_bench.data.labels import UNLABELLED
from cdsf_bench.data.pipeline import DevicePipeline, HiddenVolumes
from cdsf_bench.data.splits import make_splits
from cdsf_bench.interfaces import Batch, Cohort
from cdsf_bench.registry import default_registry
from cdsf_bench.settings import AugmentSettings
from cdsf_plugins.cdsf import JointCoupling
from cdsf_plugins.common import cohort_halves, positive_probability
from cdsf_plugins.ism import ISM
from cdsf_plugins.mdm import MDM

SHAPE = (16, 20, 16)
#: every optional term of L_G on, so that each is checked
EVERY_TERM = {"w_diag": 0.1, "w_adv": 1.0, "critic_widths": (4, 8)}


def _coupling(diag_norm: str = "batch", **settings) -> JointCoupling:
    torch.manual_seed(0)
    return JointCoupling(
        training_context(SHAPE),
        lambda: ISM(widths=(4, 8, 8), n_residual=1),
        lambda channels, classes=None: MDM(
            channels, SHAPE, classes or 2, widths=(4, 8, 8, 8, 8), norm=diag_norm
        ),
        **settings,
    )


def _batch(seed: int = 1) -> Batch:
    """Six subjects: three labelled (two with PET), three unlabelled (two with PET)."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.rand(6, 1, *SHAPE, generator=generator) * 2 - 1
    has_pet = torch.tensor([True, True, False, True, False, True])
    return Batch(
        mri=torch.rand(6, 1, *SHAPE, generator=generator) * 2 - 1,
        pet=truth * has_pet.view(-1, 1, 1, 1, 1),
        has_pet=has_pet,
        label=torch.tensor([0, UNLABELLED, 1, 1, UNLABELLED, UNLABELLED]),
        index=torch.arange(6),
        labelled=torch.tensor([True, False, True, True, False, False]),
    )


def _fully_labelled(batch: Batch, labels: list[int]) -> Batch:
    return dataclasses.replace(batch, label=torch.tensor(labels), labelled=torch.ones_like(batch.labelled))


def test_label_terms_use_the_labelled_subjects_and_synthesis_terms_every_subject():
    coupling = _coupling(**EVERY_TERM)
    batch = _batch()
    known = batch.labelled
    synthetic = coupling.synthesiser(batch.mri)
    _, d_mixed = coupling.diagnoser_loss(batch, synthetic)
    _, d_known = coupling.diagnoser_loss(batch.take(known), synthetic[known])
    _, g_mixed = coupling.synthesiser_loss(batch, synthetic)
    _, g_known = coupling.synthesiser_loss(batch.take(known), synthetic[known])
    _, g_every = coupling.synthesiser_loss(_fully_labelled(batch, [0, 1, 1, 1, 0, 1]), synthetic)
    for term in ("cls_real", "cls_synth"):
        assert float(d_mixed[term]) == pytest.approx(float(d_known[term]), rel=1e-6), term
    assert float(g_mixed["diag"]) == pytest.approx(float(g_known["diag"]), rel=1e-6)
    for term in ("voxel", "feature", "adv"):
        assert float(g_mixed[term]) == pytest.approx(float(g_every[term]), rel=1e-6), term
    # which subjects' synthetic PET each term of L_G pulls on
    leaf = synthetic.detach().requires_grad_()
    _, terms = coupling.synthesiser_loss(batch, leaf)
    reached = {}
    for term in ("voxel", "feature", "diag", "adv"):
        (grad,) = torch.autograd.grad(terms[term], leaf, retain_graph=True)
        reached[term] = grad.flatten(1).abs().sum(1) > 0
    assert torch.equal(reached["diag"], known)
    assert torch.equal(reached["voxel"], batch.has_pet) and torch.equal(reached["feature"], batch.has_pet)
    assert bool(reached["adv"].all())


@pytest.mark.parametrize("pairs", ["all", "missing", "cross_fitted"])
def test_the_diagnoser_learns_nothing_from_unlabelled_subjects_the_generator_does(pairs: str):
    """After a step D's weights and statistics are those it would have without the unlabelled
    subjects' scans; G's are not: their PET trained it."""
    batch = _batch()
    other = copy.copy(batch)
    unknown = ~batch.labelled
    scans = _batch(seed=7)
    other.mri = torch.where(unknown.view(-1, 1, 1, 1, 1), scans.mri, batch.mri)
    other.pet = torch.where(unknown.view(-1, 1, 1, 1, 1), scans.pet, batch.pet) * batch.has_pet.view(
        -1, 1, 1, 1, 1
    )
    states = []
    for which in (batch, other):
        coupling = _coupling(synthetic_pairs=pairs, **EVERY_TERM)
        coupling.step(which)
        states.append({name: copy.deepcopy(m.state_dict()) for name, m in coupling.modules().items()})
    first, second = states
    assert all(torch.equal(first["diagnoser"][k], second["diagnoser"][k]) for k in first["diagnoser"])
    generators = [name for name in first if name.startswith("synthesiser")]
    assert any(not torch.equal(first[g][k], second[g][k]) for g in generators for k in first[g])


def test_an_unlabelled_subjects_label_is_never_read():
    batch = _batch()
    states = []
    for fill in (0, 1):
        coupling = _coupling(**EVERY_TERM)
        coupling.step(dataclasses.replace(batch, label=torch.where(batch.labelled, batch.label, fill)))
        states.append(
            {f"{n}.{k}": v.clone() for n, m in coupling.modules().items() for k, v in m.state_dict().items()}
        )
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


# -- every coupling, on batches its stages draw from a cohort with unlabelled subjects --------


def _cohort(n: int = 24, shape=(8, 8, 8)) -> tuple[Cohort, np.ndarray]:
    rng = np.random.default_rng(2)
    labels = np.array([0, 1] * (n // 2))
    labels[::3] = UNLABELLED
    has_pet = rng.random(n) < 0.6
    truth = rng.uniform(-1, 1, (n, *shape)).astype(np.float16)
    table = pd.DataFrame(
        {"participant_id": [f"s{i}" for i in range(n)], "diagnosis": "CN", "has_pet": has_pet}
    )
    cohort = Cohort(
        table,
        rng.uniform(-1, 1, (n, *shape)).astype(np.float16),
        np.where(has_pet[:, None, None, None], truth, np.float16(0)),
        has_pet,
        np.eye(4),
        np.ones(shape, bool),
        pet_truth=truth,
    )
    return cohort, labels


#: each shipped coupling and the stage-by-stage answer to "does it meet unlabelled subjects?"
STAGE_LABELS = {
    "joint": ["where_known"],
    "decoupled": ["unused", "required"],
    "task-induced": ["where_known", "required"],
    "single": ["required"],
    "mean-impute": ["required"],
    "complete-case": ["required"],
    "oracle": ["required"],
}


@pytest.mark.parametrize("name", list(STAGE_LABELS))
def test_every_coupling_trains_on_a_cohort_with_unlabelled_subjects(name: str):
    cohort, labels = _cohort()
    splits = make_splits(cohort.participants, labels, val=0.25, test=0.25, seed=0)
    registry = default_registry()
    coupling_class = registry.coupling_class(name)
    pipe = DevicePipeline(
        cohort, labels, splits, device=torch.device("cpu"), seed=0, batch_size=4,
        augment=AugmentSettings(enabled=False), hidden=HiddenVolumes.declared_by(coupling_class),
    )  # fmt: skip
    synth = registry.get("synthesiser", "ism").factory
    diag = registry.get("diagnoser", "mdm").factory

    def build_synth() -> torch.nn.Module:
        return synth(widths=(2, 4, 4), n_residual=1, decoder_widths=(4, 2))

    def build_diag(channels: int, classes: int | None = None) -> torch.nn.Module:
        return diag(channels, (8, 8, 8), classes or 2, widths=(4, 4, 4, 4, 4))

    torch.manual_seed(0)
    context = training_context((8, 8, 8), has_pet_truth=True)
    two_stage = ("decoupled", "task-induced")
    settings = {"discriminator_widths": (4, 8)} if name in two_stage else {}  # 8^3: a small critic
    synthesiser = build_synth if coupling_class.needs_synthesiser else None
    coupling = coupling_class(context, synthesiser, build_diag, **settings)
    stages = coupling.stages()
    assert [stage.labels for stage in stages] == STAGE_LABELS[name]
    for stage in stages:
        batches = list(pipe.train_batches(0, stage.subjects, stage.labels))
        drew_unlabelled = any(not bool(b.labelled.all()) for b in batches)
        assert drew_unlabelled == (stage.labels != "required"), stage.name
        for batch in batches:
            losses = stage.step(batch)
            assert all(torch.isfinite(value) for value in losses.values()), (stage.name, losses)


# -- cross-fitting ---------------------------------------------------------------------------


def test_halves_are_fixed_per_subject_and_unrelated_to_the_row_order():
    rows = torch.arange(200)
    batch = Batch(
        torch.zeros(200, 1, 1, 1, 1), torch.zeros(200, 1, 1, 1, 1), torch.ones(200).bool(), rows * 0, rows
    )
    halves = cohort_halves(batch)
    assert 80 < int(halves.sum()) < 120
    assert abs(float(halves[::2].float().mean()) - float(halves[1::2].float().mean())) < 0.2
    reversed_rows = batch.take(torch.arange(199, -1, -1))
    assert torch.equal(cohort_halves(reversed_rows), halves.flip(0))


def test_cross_fitted_pairs_come_from_the_generator_of_the_other_half():
    coupling = _coupling(synthetic_pairs="cross_fitted")
    assert set(coupling.modules()) == {"synthesiser", "synthesiser_b", "diagnoser"}
    (stage,) = coupling.stages()
    assert set(stage.modules) == set(coupling.modules())
    optimised = {id(p) for group in coupling.optimise_synthesiser.param_groups for p in group["params"]}
    assert optimised == {id(p) for g in coupling.synthesisers for p in g.parameters()}
    batch = _batch()
    halves = cohort_halves(batch)
    assert 0 < int(halves.sum()) < len(batch)
    own, other = coupling.synthesise(batch)
    assert own.requires_grad and not other.requires_grad
    with torch.no_grad():
        outputs = [g.eval()(batch.mri) for g in coupling.synthesisers]
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)  # two generators, not one twice
    for i, half in enumerate(halves.tolist()):
        assert torch.allclose(own[i], outputs[half][i], atol=1e-5)
        assert torch.allclose(other[i], outputs[1 - half][i], atol=1e-5)


def test_a_cross_fitted_generator_learns_from_its_own_half_alone():
    """G_A's gradient does not move when the other half's PET and labels change, with every term on."""
    batch = _batch()
    batch = _fully_labelled(batch, [0, 1, 1, 1, 0, 1])
    coupling = _coupling(synthetic_pairs="cross_fitted", **EVERY_TERM)
    halves = cohort_halves(batch)
    changed = copy.copy(batch)
    flip = (halves == 1).view(-1, 1, 1, 1, 1)
    changed.pet = torch.where(flip, -batch.pet, batch.pet)
    changed.label = torch.where(halves == 1, 1 - batch.label, batch.label)

    def gradients(which: Batch) -> list[torch.Tensor]:
        model = copy.deepcopy(coupling)
        own, _ = model.synthesise(which)
        loss, _ = model.synthesiser_loss(which, own)
        loss.backward()
        return [torch.cat([p.grad.flatten() for p in g.parameters()]) for g in model.synthesisers]

    (a_first, b_first), (a_second, b_second) = gradients(batch), gradients(changed)
    assert torch.equal(a_first, a_second)
    assert not torch.allclose(b_first, b_second)


def test_a_cross_fitted_prediction_averages_the_two_generators():
    coupling = _coupling(synthetic_pairs="cross_fitted", diag_norm="group")
    for module in coupling.modules().values():
        module.eval()
    batch = _batch()
    with torch.no_grad():
        prediction = coupling.predict(batch)
        synthetics = [g(batch.mri) for g in coupling.synthesisers]
        probabilities = []
        for synthetic in synthetics:
            pet = torch.where(batch.has_pet.view(-1, 1, 1, 1, 1), batch.pet, synthetic)
            logits = coupling.diagnoser(torch.cat([batch.mri, pet], dim=1)).logits
            probabilities.append(positive_probability(logits))
    assert torch.allclose(prediction.probability, (probabilities[0] + probabilities[1]) / 2, atol=1e-6)
    assert torch.allclose(prediction.synthetic, (synthetics[0] + synthetics[1]) / 2, atol=1e-6)
    real = batch.has_pet
    assert torch.allclose(probabilities[0][real], probabilities[1][real])  # real PET: one answer
    assert not torch.allclose(probabilities[0][~real], probabilities[1][~real])
