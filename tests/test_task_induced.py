"""The task-induced coupling (TPA-GAN's idea): a diagnosing adversary shapes the generator.

Driven directly on 16-voxel volumes: A's head and losses, which update moves which network
(G learns from A frozen: A's weights and batch-norm statistics stay), the label terms only
over labelled subjects, and the method end to end through the CLI on a tiny phantom,
twice, to see that it repeats.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from support import training_context
from torch import nn

from cdsf_bench.cli import main
from cdsf_bench.data.labels import UNLABELLED
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Batch
from cdsf_bench.registry import default_registry
from cdsf_plugins.mdm import MDM
from cdsf_plugins.task_induced import TaskInducedCoupling
from cdsf_plugins.unet3d import UNet3D

SHAPE = (16, 16, 16)


def coupling(diag_norm: str = "batch", **settings: object) -> TaskInducedCoupling:
    torch.manual_seed(0)
    return TaskInducedCoupling(
        training_context(SHAPE, epochs=3),
        lambda: UNet3D(widths=(4, 8)),
        lambda channels, classes=None: MDM(
            channels, SHAPE, classes or 2, widths=(4, 4, 4, 4, 4), norm=diag_norm
        ),
        discriminator_widths=(4, 8),
        **settings,
    )


def batch() -> Batch:
    """Six subjects: four labelled (two with PET), two unlabelled (one with PET)."""
    generator = torch.Generator().manual_seed(1)
    truth = torch.rand(6, 1, *SHAPE, generator=generator) * 2 - 1
    has_pet = torch.tensor([True, False, True, False, True, False])
    return Batch(
        mri=torch.rand(6, 1, *SHAPE, generator=generator) * 2 - 1,
        pet=truth * has_pet.view(-1, 1, 1, 1, 1),
        has_pet=has_pet,
        label=torch.tensor([0, 1, 1, 0, UNLABELLED, UNLABELLED]),
        index=torch.arange(6),
        labelled=torch.tensor([True, True, True, True, False, False]),
    )


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(module.state_dict())


def moved(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(before[key], value) for key, value in module.state_dict().items())


def test_registered_with_its_settings_and_space() -> None:
    component = default_registry().get("coupling", "task-induced")
    assert component.factory is TaskInducedCoupling
    settings = component.parameters()
    assert (settings["w_task"], settings["task_lr"], settings["w_adv"], settings["w_l1"]) == (
        1.0,
        2e-4,
        1.0,
        100.0,
    )
    assert {"w_task", "task_lr", "weight_decay"} <= set(component.space)


def test_the_adversary_has_a_real_class_and_a_synthetic_output_and_stages_are_two() -> None:
    method = coupling()
    logits = method.adversary(torch.rand(2, 2, *SHAPE)).logits
    assert logits.shape == (2, 3)  # K = 2 real classes, then "synthetic"
    synthesis, diagnosis = method.stages()
    assert (synthesis.name, synthesis.select_on, synthesis.subjects, synthesis.labels) == (
        "synthesis",
        "mae",
        "all",
        "where_known",
    )
    assert set(synthesis.modules) == {"synthesiser", "discriminator", "task_adversary"}
    assert (diagnosis.name, diagnosis.subjects, diagnosis.labels, set(diagnosis.modules)) == (
        "diagnosis",
        "all",
        "required",
        {"diagnoser"},
    )
    assert set(method.modules()) == {"diagnoser", "synthesiser", "discriminator", "task_adversary"}
    assert method.optimise_adversary.param_groups[0]["betas"] == (0.5, 0.999)


def test_adversary_losses_are_real_class_and_synthetic_cross_entropies() -> None:
    method = coupling()
    data = batch()
    synthetic = method.synthesiser(data.mri)
    loss, terms = method.adversary_loss(data, synthetic)
    loss, terms = loss.detach(), {key: value.detach() for key, value in terms.items()}
    method.adversary.train()
    real = data.has_pet
    inputs = torch.cat(
        [torch.cat([data.mri[real], data.pet[real]], 1), torch.cat([data.mri, synthetic.detach()], 1)]
    )
    with torch.no_grad():
        logits = method.adversary(inputs).logits
    log_p = logits.log_softmax(dim=1)
    real_log_p = log_p[: int(real.sum())]
    # subjects with PET: 0 (label 0), 2 (label 1), 4 (unlabelled: any real class)
    expected_real = -torch.stack(
        [real_log_p[0, 0], real_log_p[1, 1], torch.logsumexp(real_log_p[2, :2], dim=0)]
    ).mean()
    expected_synth = -log_p[int(real.sum()) :, 2].mean()
    expected_real, expected_synth = float(expected_real), float(expected_synth)
    assert float(terms["task_real"]) == pytest.approx(expected_real, rel=1e-5)
    assert float(terms["task_synth"]) == pytest.approx(expected_synth, rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * (expected_real + expected_synth), rel=1e-5)


def test_generator_gets_the_task_gradient_and_the_adversary_stays_as_it_was() -> None:
    method = coupling(w_adv=0.0, w_l1=0.0)  # the task term alone
    data = batch()
    before = snapshot(method.adversary)
    assert any("running_mean" in key for key in before)
    synthetic = method.synthesiser(data.mri)
    loss, terms = method.generator_loss(data, synthetic)
    loss.backward()
    assert float(terms["task"].detach()) > 0 and float(loss.detach()) == pytest.approx(
        float(terms["task"].detach())
    )
    grads = [p.grad for p in method.synthesiser.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert not moved(before, method.adversary)  # weights and running statistics
    assert all(p.grad is None for p in method.adversary.parameters())
    assert method.adversary.training and all(p.requires_grad for p in method.adversary.parameters())


def test_zero_task_weight_is_the_decoupled_generator_loss() -> None:
    method = coupling(w_task=0.0)
    data = batch()
    synthetic = method.synthesiser(data.mri)
    loss, terms = method.generator_loss(data, synthetic)
    assert float(terms["task"]) == 0.0
    assert float(loss) == pytest.approx(float(terms["adv"]) + 100.0 * float(terms["l1"]), rel=1e-6)
    real = data.has_pet
    l1 = (synthetic[real] - data.pet[real]).abs().mean()
    assert float(terms["l1"]) == pytest.approx(float(l1), rel=1e-5)  # subjects with PET only


def test_the_synthesis_step_moves_the_generator_and_its_adversaries_only() -> None:
    method = coupling()
    data = batch()
    networks = {
        "G": method.synthesiser,
        "A": method.adversary,
        "P": method.critic.network,  # type: ignore[union-attr]
        "D": method.diagnoser,
    }
    before = {name: snapshot(module) for name, module in networks.items()}
    terms = method.synthesis_step(data)
    assert {"A", "G", "task_real", "task_synth", "D", "l1", "adv", "task", "skipped_single"} == set(terms)
    assert all(value.dim() == 0 and torch.isfinite(value) for value in terms.values())
    assert moved(before["G"], method.synthesiser) and moved(before["A"], method.adversary)
    assert moved(before["P"], method.critic.network)  # type: ignore[union-attr]
    assert not moved(before["D"], method.diagnoser)


def test_label_terms_use_labelled_subjects_only() -> None:
    """An unlabelled subject's label (-1) is never read: any label in its place changes nothing."""
    method = coupling()
    data = batch()
    synthetic = method.synthesiser(data.mri).detach()
    other = dataclasses.replace(data, label=torch.tensor([0, 1, 1, 0, 1, 0]))
    for loss in (method.adversary_loss, method.generator_loss):
        _, mine = loss(data, synthetic)
        _, theirs = loss(other, synthetic)
        assert all(torch.equal(mine[key], theirs[key]) for key in mine), loss.__name__
    # and the unlabelled subjects do train the terms that need no label
    _, every = method.generator_loss(data, synthetic)
    _, known = method.generator_loss(data.take(data.labelled), synthetic[data.labelled])
    assert float(every["task"]) != pytest.approx(float(known["task"]))


def test_a_batch_norm_adversary_never_learns_from_one_subject() -> None:
    lonely = batch().take(torch.tensor([1]))  # no PET: one synthetic pair, no real one
    synthetic = torch.rand(1, 1, *SHAPE) * 2 - 1
    terms = coupling().adversary_loss(lonely, synthetic)[1]
    assert float(terms["skipped_single"]) == 1.0
    assert float(terms["task_real"]) == 0.0 and float(terms["task_synth"]) == 0.0
    pair = batch().take(torch.tensor([1, 3]))  # two synthetic pairs: normalised together
    terms = coupling().adversary_loss(pair, synthetic.expand(2, -1, -1, -1, -1))[1]
    assert float(terms["skipped_single"]) == 0.0 and float(terms["task_synth"]) > 0


def test_bad_settings_name_the_coupling() -> None:
    with pytest.raises(InputError, match="coupling.task-induced.synthesis_epochs"):
        coupling(synthesis_epochs=-1)
    with pytest.raises(InputError, match="task-induced coupling trains a synthesiser"):
        TaskInducedCoupling(training_context(SHAPE), None, lambda c, k=None: MDM(c, SHAPE, k or 2))


# --- end to end ---------------------------------------------------------------------------

RUN = ["run", "--synth", "unet3d", "--diag", "mdm", "--coupling", "task-induced", "--preset", "tiny"]
RUN += ["--seed", "0", "--epochs", "1", "--set", "data.subjects=32", "--set", "evaluate.bootstrap=20"]
RUN += ["--set", "synth.unet3d.widths=[4, 8]", "--set", "coupling.task-induced.discriminator_widths=[4, 8]"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("task-induced")
    env = {"CDSF_BENCH_QUIET": "1", "CDSF_BENCH_CACHE": str(root / "cache")}
    folders = (root / "a", root / "b")
    for folder in folders:
        result = CliRunner().invoke(main, [*RUN, "--out", str(folder)], env=env)
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return folders


def test_runs_end_to_end_with_both_stages(two_runs: tuple[Path, Path]) -> None:
    folder = two_runs[0]
    history = pd.read_csv(folder / "history.csv")
    assert list(history.groupby("stage", sort=False).size().items()) == [("synthesis", 1), ("diagnosis", 1)]
    assert {"train_A", "train_task", "train_task_real", "train_task_synth", "train_l1", "val_mae"} <= set(
        history.columns
    )
    predictions = pd.read_csv(folder / "predictions.csv")
    assert set(predictions["pet_source"]) == {"real", "synthetic"}
    assert predictions["probability"].between(0, 1).all()
    assert predictions["synth_mae"].notna().any()  # G's synthesis is scored


def test_two_runs_of_one_seed_are_equal(two_runs: tuple[Path, Path]) -> None:
    first, second = (pd.read_csv(folder / "predictions.csv") for folder in two_runs)
    pd.testing.assert_frame_equal(first, second)
    histories = [pd.read_csv(folder / "history.csv").filter(regex="^(train|val)_") for folder in two_runs]
    pd.testing.assert_frame_equal(*histories)
