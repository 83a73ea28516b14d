"""The diffusion synthesiser: MONAI's network and scheduler under the synthesiser contract.

Tiny networks on 16-voxel (and odd-sized) volumes: the training objective is the noise
MSE, DDIM sampling is deterministic and a subject's sample does not depend on its batch,
the training-mode one-step estimate carries a gradient, every coupling that trains a
synthesiser trains this one, and MONAI missing is a clear exit 2 naming the extra.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from support import training_context

from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Batch
from cdsf_bench.registry import default_registry
from cdsf_plugins.baselines import DecoupledCoupling
from cdsf_plugins.cdsf import JointCoupling
from cdsf_plugins.diffusion import DiffusionSynthesiser, subject_noise
from cdsf_plugins.mdm import MDM
from cdsf_plugins.task_induced import TaskInducedCoupling

SHAPE = (16, 16, 16)
TINY = {"channels": (8, 8), "norm_groups": 8, "sampling_steps": 4}


def synthesiser(**settings: object) -> DiffusionSynthesiser:
    torch.manual_seed(0)
    return DiffusionSynthesiser(**{**TINY, **settings})  # type: ignore[arg-type]


def volumes(n: int, shape: tuple[int, ...] = SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def build_diagnoser(channels: int, classes: int | None = None) -> torch.nn.Module:
    return MDM(channels, SHAPE, classes or 2, widths=(4, 4, 4, 4, 4), norm="batch")


def batch() -> Batch:
    truth = volumes(4, seed=2)
    has_pet = torch.tensor([True, False, True, True])
    return Batch(
        mri=volumes(4),
        pet=truth * has_pet.view(-1, 1, 1, 1, 1),
        has_pet=has_pet,
        label=torch.tensor([0, 1, 1, 0]),
        index=torch.arange(4),
    )


def test_registered_with_its_settings() -> None:
    component = default_registry().get("synthesiser", "diffusion")
    assert component.factory is DiffusionSynthesiser
    settings = component.parameters()
    assert settings["sampling_steps"] == 20 and settings["train_timesteps"] == 1000
    assert settings["channels"] == (16, 32, 64) and settings["estimate_timestep"] == -1
    assert set(component.space) <= set(settings)


@pytest.mark.parametrize("shape", [SHAPE, (15, 13, 17)])
def test_both_modes_keep_the_shape_in_range(shape: tuple[int, int, int]) -> None:
    model = synthesiser()
    mri = volumes(2, shape)
    model.train()
    estimate = model(mri)
    model.eval()
    with torch.no_grad():
        sample = model(mri)
    for out in (estimate.detach(), sample):
        assert out.shape == (2, 1, *shape) and float(out.abs().max()) <= 1.0
    assert not torch.equal(estimate.detach(), sample)  # four DDIM steps are not one


def test_the_state_is_the_unets_alone() -> None:
    model = synthesiser()
    assert set(model.state_dict()) == {f"unet.{key}" for key in model.unet.state_dict()}


def test_training_loss_is_the_noise_prediction_mse_at_uniform_timesteps() -> None:
    model = synthesiser()
    mri, pet = volumes(3), volumes(3, seed=2)
    torch.manual_seed(5)
    losses = model.training_loss(mri, pet)
    torch.manual_seed(5)
    timesteps = torch.randint(0, 1000, (3,))
    noise = torch.randn(pet.shape)
    share = model.scheduler.alphas_cumprod[timesteps].float().view(-1, 1, 1, 1, 1)
    noised = share.sqrt() * pet + (1 - share).sqrt() * noise
    with torch.no_grad():
        predicted = model.unet(torch.cat([noised, mri], 1), timesteps)
    expected = (predicted - noise).pow(2).flatten(1).mean(1)
    assert losses.shape == (3,)
    assert torch.allclose(losses.detach(), expected, rtol=1e-5)
    losses.mean().backward()
    assert all(p.grad is not None for p in model.unet.parameters() if p.requires_grad)


def test_sampling_is_deterministic_and_independent_of_the_batch() -> None:
    model = synthesiser().eval()
    mri = volumes(3)
    with torch.no_grad():
        together = model(mri)
        again = model(mri)
        alone = model(mri[1:2])
        reordered = model(mri[[2, 0, 1]])
        other_seed = synthesiser(seed=1).eval()(mri)
    assert torch.equal(together, again)
    assert torch.allclose(together[1:2], alone, atol=1e-6)
    assert torch.allclose(together[[2, 0, 1]], reordered, atol=1e-6)
    assert not torch.allclose(together, other_seed)
    # each subject has its own noise, a function of its MRI
    noise = subject_noise(mri, 0)
    assert not torch.allclose(noise[0], noise[1]) and torch.equal(noise[1:2], subject_noise(mri[1:2], 0))


def test_ddim_takes_the_configured_number_of_steps() -> None:
    for steps in (1, 4, 7):
        model = synthesiser(sampling_steps=steps).eval()
        calls: list[int] = []

        def record(
            module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], calls: list[int] = calls
        ) -> None:
            calls.append(int(inputs[1][0]))

        model.unet.register_forward_pre_hook(record)
        with torch.no_grad():
            model(volumes(1))
        assert len(calls) == steps and calls[0] == 999 and calls == sorted(calls, reverse=True)


def test_one_ddim_step_is_the_one_step_estimate() -> None:
    """From y_T with a_prev = 1, DDIM's single step returns its x0 prediction: the estimate at T - 1."""
    model = synthesiser(sampling_steps=1)
    mri = volumes(2)
    with torch.no_grad():
        estimate = model.train()(mri)
        sample = model.eval()(mri)
    assert torch.allclose(estimate, sample, atol=1e-5)


def test_the_one_step_estimate_carries_a_gradient_even_where_clipped() -> None:
    model = synthesiser().train()
    estimate = model(volumes(2))
    clipped = (estimate.detach().abs() == 1.0).float().mean()
    (estimate * torch.rand_like(estimate)).sum().backward()
    grads = [p.grad for p in model.unet.parameters() if p.requires_grad]
    assert float(clipped) > 0  # an untrained estimate overshoots: the test covers clipped voxels
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"channels": (8, 12)}, "synth.diffusion.channels"),
        ({"sampling_steps": 0}, "synth.diffusion.sampling_steps"),
        ({"sampling_steps": 2000}, "synth.diffusion.sampling_steps"),
        ({"estimate_timestep": 1000}, "synth.diffusion.estimate_timestep"),
        ({"schedule": "nonsense"}, "synth.diffusion.schedule"),
    ],
)
def test_bad_settings_name_the_field(settings: dict, field: str) -> None:
    with pytest.raises(InputError, match=field):
        synthesiser(**settings)


# --- the couplings train it ---------------------------------------------------------------


def test_decoupled_trains_it_on_its_own_objective_without_a_critic() -> None:
    coupling = DecoupledCoupling(training_context(SHAPE), synthesiser, build_diagnoser)
    assert coupling.critic is None and set(coupling.stages()[0].modules) == {"synthesiser"}
    data = batch().take(batch().has_pet)
    before = copy.deepcopy(coupling.synthesiser.state_dict())
    terms = coupling.synthesis_step(data)
    assert set(terms) == {"G", "own"} and float(terms["own"]) > 0
    after = coupling.synthesiser.state_dict()
    assert any(not torch.equal(before[key], after[key]) for key in before)


def test_joint_adds_its_own_objective_and_the_feature_term_reaches_it() -> None:
    coupling = JointCoupling(training_context(SHAPE), synthesiser, build_diagnoser)
    data = batch()
    coupling.synthesiser.train()
    synthetic = coupling.synthesiser(data.mri)
    loss, terms = coupling.synthesiser_loss(data, synthetic)
    assert float(terms["own"].detach()) > 0
    expected = 10.0 * terms["voxel"] + terms["feature"] + terms["own"]
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    coupling.synthesiser.zero_grad()
    terms["feature"].backward()
    assert sum(float(p.grad.abs().sum()) for p in coupling.synthesiser.parameters() if p.grad is not None) > 0
    step = coupling.step(data)
    assert all(torch.isfinite(value) for value in step.values())


def test_task_induced_trains_it_with_the_task_term_on_the_estimate() -> None:
    coupling = TaskInducedCoupling(training_context(SHAPE), synthesiser, build_diagnoser)
    assert coupling.critic is None
    data = batch()
    coupling.synthesiser.train()
    synthetic = coupling.synthesiser(data.mri)
    loss, terms = coupling.generator_loss(data, synthetic)
    assert float(loss) == pytest.approx(float(terms["own"] + terms["task"]), rel=1e-5)
    assert float(terms["l1"]) == 0.0
    terms["task"].backward()
    assert sum(float(p.grad.abs().sum()) for p in coupling.synthesiser.parameters() if p.grad is not None) > 0


# --- through the CLI ----------------------------------------------------------------------

RUN = ["run", "--synth", "diffusion", "--diag", "mdm", "--preset", "tiny", "--seed", "0", "--epochs", "1"]
RUN += [
    "--set",
    "data.subjects=32",
    "--set",
    "evaluate.bootstrap=20",
    "--set",
    "synth.diffusion.channels=[8, 8]",
]
RUN += ["--set", "synth.diffusion.sampling_steps=3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"CDSF_BENCH_QUIET": "1", "CDSF_BENCH_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusion")
    folders = {}
    for name, coupling in (("decoupled", "--decoupled"), ("again", "--decoupled"), ("joint", "--joint")):
        folders[name] = root / name
        result = CliRunner().invoke(main, [*RUN, coupling, "--out", str(folders[name])], env=env)
        assert result.exit_code == 0, f"{name}: {result.output}\n{result.exception!r}"
    return folders


@pytest.mark.parametrize("name, stages", [("decoupled", ["synthesis", "diagnosis"]), ("joint", ["joint"])])
def test_runs_end_to_end(name: str, stages: list[str], runs: dict[str, Path]) -> None:
    history = pd.read_csv(runs[name] / "history.csv")
    assert list(history["stage"].unique()) == stages and "train_own" in history
    predictions = pd.read_csv(runs[name] / "predictions.csv")
    assert set(predictions["pet_source"]) == {"real", "synthetic"}
    assert predictions["synth_mae"].notna().any() and predictions["probability"].between(0, 1).all()


def test_two_runs_of_one_seed_are_equal(runs: dict[str, Path]) -> None:
    first, second = (pd.read_csv(runs[name] / "predictions.csv") for name in ("decoupled", "again"))
    pd.testing.assert_frame_equal(first, second)


def test_predict_repeats_the_runs_synthetic_pet(
    runs: dict[str, Path], env: dict[str, str], tmp_path: Path
) -> None:
    """``cdsf-bench predict`` rebuilds the sampler from the U-Net's state and repeats each subject's PET.

    Bit for bit: predict batches the run's test subjects as the run did, and each subject's
    DDIM noise is seeded from its own MRI, not from its place in a batch.
    """
    result = CliRunner().invoke(
        main, ["predict", str(runs["decoupled"]), "--data", "phantom", "--out", str(tmp_path / "p")], env=env
    )
    assert result.exit_code == 0, result.output
    run = pd.read_csv(runs["decoupled"] / "predictions.csv", dtype={"participant_id": str})
    again = pd.read_csv(tmp_path / "p" / "predictions.csv", dtype={"participant_id": str})
    both = run.merge(again, on="participant_id", suffixes=("_run", "_predict"))
    assert len(both) == len(run) > 0
    assert (both["pet_source_run"] == both["pet_source_predict"]).all()
    for column in ("probability", "synth_mae", "synth_psnr"):
        assert (both[f"{column}_run"] == both[f"{column}_predict"]).all(), column


def test_without_monai_selecting_it_exits_2_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]
) -> None:
    for module in ("monai.networks.nets", "monai.networks.schedulers"):
        monkeypatch.setitem(sys.modules, module, None)  # type: ignore[arg-type]
    result = CliRunner().invoke(main, [*RUN, "--decoupled", "--out", str(tmp_path / "run")], env=env)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "cdsf-bench[diffusion]" in message and "Traceback" not in message
