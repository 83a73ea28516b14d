"""The regional diagnoser: its features are regional means, it learns from few labels, it runs everywhere.

The features are checked against a direct computation (NumPy, from the atlas's centres and
sizes), the learning test plants the label in one region's mean and trains as a run would
(Adam at the run's default learning rate, batches of four), and the end-to-end runs go
through the CLI at the tiny preset under the couplings that treat a diagnoser differently:
MRI alone, real PET for everyone, and joint training with a generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cdsf_bench import Choice
from cdsf_bench.assemble import assemble
from cdsf_bench.cli import main
from cdsf_bench.data.grid import reference_grid
from cdsf_bench.data.regions import REGIONS, brain_box_affine, region_masks, region_weights
from cdsf_bench.perf.cohort import synthetic_cohort
from cdsf_bench.perf.settings import PerfSettings, resolve_config
from cdsf_bench.registry import default_registry
from cdsf_bench.testing import check_diagnoser
from cdsf_plugins.regional import Regional

GRID = reference_grid(8.0)


def _volumes(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, *GRID.shape, generator=generator) * 2 - 1


def _direct_soft_means(volume: np.ndarray) -> list[float]:
    """Each region's Gaussian-weighted mean of a volume, voxel by voxel from the affine."""
    means = []
    for region in REGIONS.values():
        total = weighted = 0.0
        for index in np.ndindex(*volume.shape):
            position = GRID.affine[:3, :3] @ np.asarray(index, dtype=float) + GRID.affine[:3, 3]
            weight = sum(
                np.exp(-np.sum((position - np.asarray(c)) ** 2) / (2 * region.sigma_mm**2))
                for c in region.centres_mm
            )
            total += weight
            weighted += weight * volume[index]
        means.append(weighted / total)
    return means


def test_soft_features_are_the_gaussian_weighted_regional_means() -> None:
    x = _volumes(1, 2)
    module = Regional(2, GRID.shape, affine=GRID.affine, masks="soft")
    got = module.regional_means(x)[0].numpy()
    expected = [m for channel in x[0].double().numpy() for m in _direct_soft_means(channel)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_hard_features_are_the_means_within_the_atlas_masks() -> None:
    x = _volumes(3, 1, seed=1)
    module = Regional(1, GRID.shape, affine=GRID.affine, masks="hard")
    masks = region_masks(GRID.affine, GRID.shape, np.ones(GRID.shape, bool), REGIONS)
    expected = np.stack([[v[0].numpy()[mask].mean() for mask in masks.values()] for v in x])
    np.testing.assert_allclose(module.regional_means(x).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masks", ["soft", "hard"])
def test_a_constant_volume_gives_its_constant_in_every_region(masks: str) -> None:
    module = Regional(2, GRID.shape, affine=GRID.affine, masks=masks)
    x = torch.full((2, 2, *GRID.shape), 0.3)
    x[:, 1] = -0.7
    means = module.regional_means(x).reshape(2, 2, len(REGIONS))
    torch.testing.assert_close(means[:, 0], torch.full((2, len(REGIONS)), 0.3))
    torch.testing.assert_close(means[:, 1], torch.full((2, len(REGIONS)), -0.7))


def test_a_region_off_the_grid_is_refused() -> None:
    far = np.eye(4)
    far[:3, 3] = 1000.0  # the grid lies a metre from the brain: no sphere reaches it
    with pytest.raises(ValueError, match="no voxel on this grid"):
        region_weights(far, (4, 4, 4), ["hippocampus"], soft=False)


@pytest.mark.parametrize("hidden", [0, 8])
def test_the_gradient_reaches_the_input(hidden: int) -> None:
    module = Regional(2, GRID.shape, affine=GRID.affine, masks="hard", hidden=hidden)
    module.train()
    with torch.no_grad():  # the zero-initialised last layer would pass no gradient on
        module.classifier.weight.normal_()
    x = _volumes(4, 2).requires_grad_()
    F.cross_entropy(module(x).logits, torch.tensor([0, 1, 0, 1])).backward()
    assert x.grad is not None
    gradient = x.grad.abs().sum(dim=(0, 1))
    masks = region_masks(GRID.affine, GRID.shape, np.ones(GRID.shape, bool), REGIONS)
    inside = torch.from_numpy(np.any(list(masks.values()), axis=0))
    # both channels, and exactly the voxels of the atlas's regions, get a gradient
    assert bool((x.grad.abs().sum(dim=(2, 3, 4)) > 0).all())
    assert bool((gradient[inside] > 0).all()) and bool((gradient[~inside] == 0).all())


@pytest.mark.parametrize("hidden", [0, 16])
def test_it_learns_a_label_carried_by_one_regions_mean(hidden: int) -> None:
    """24 training subjects, the classes' precuneus means three sds apart (AUC 0.98 at best)."""
    masks = region_masks(GRID.affine, GRID.shape, np.ones(GRID.shape, bool), ["precuneus"])
    region = torch.from_numpy(masks["precuneus"])
    generator = torch.Generator().manual_seed(3)

    def cohort(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 2
        x = 0.05 * torch.randn(n, 1, *GRID.shape, generator=generator)
        # a subject-level offset of the region: sd 0.03, and +-0.05 by class
        x[:, 0, region] += 0.03 * torch.randn(n, 1, generator=generator) + 0.05 * (2 * labels[:, None] - 1)
        return x, labels

    train, train_labels = cohort(24)
    test, test_labels = cohort(200)
    torch.manual_seed(0)
    module = Regional(1, GRID.shape, affine=GRID.affine, hidden=hidden)
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(10):
        module.train()
        for rows in torch.randperm(24).reshape(-1, 4):
            loss = F.cross_entropy(module(train[rows]).logits, train_labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    module.eval()
    with torch.no_grad():
        probability = module(test).logits.softmax(-1)[:, 1]
    # Adam moves the eight noise features' weights almost as far as the signal's in 60 steps
    assert roc_auc_score(test_labels.numpy(), probability.numpy()) > 0.85


def test_it_passes_the_conformance_kit_with_and_without_an_affine() -> None:
    component = default_registry().get("diagnoser", "regional")
    check_diagnoser(component)
    check_diagnoser(component, shape=GRID.shape, affine=GRID.affine, masks="hard", hidden=8)


def test_every_value_of_its_search_space_builds_and_runs() -> None:
    component = default_registry().get("diagnoser", "regional")
    for key, param in component.space.items():
        assert isinstance(param, Choice)
        for value in param.values:
            setting = {key: value}
            module = component.factory(in_channels=2, input_shape=GRID.shape, affine=GRID.affine, **setting)
            module.train()
            assert module(_volumes(2, 2)).logits.shape == (2, 2), (key, value)


def test_without_an_affine_the_grid_spans_the_brain_box() -> None:
    affine = brain_box_affine(GRID.shape)
    corners = [
        affine[:3, :3] @ np.asarray(c, float) + affine[:3, 3] for c in ((0, 0, 0), np.subtract(GRID.shape, 1))
    ]
    np.testing.assert_allclose(corners, [(-72.0, -107.0, -72.0), (72.0, 73.0, 82.0)])


def test_the_core_places_the_atlas_with_the_cohorts_affine() -> None:
    """``assemble`` hands a diagnoser that names ``affine`` the cohort's own (the contract)."""
    registry = default_registry()
    settings = PerfSettings(synth="none", diag="regional", coupling="single", size=GRID.shape, device="cpu")
    config = resolve_config(settings, registry)
    cohort, labels, splits = synthetic_cohort(GRID.shape, 4, seed=0)
    cohort.affine = GRID.affine.copy()
    cohort.affine[:3, 3] += 8.0  # one voxel off the reference grid: the atlas must follow it
    diagnoser = assemble(config, registry, cohort, labels, splits, torch.device("cpu")).coupling.modules()
    expected = region_weights(cohort.affine, GRID.shape, REGIONS, soft=False)
    np.testing.assert_allclose(diagnoser["diagnoser"].weights.numpy(), expected, rtol=1e-6, atol=1e-12)


def test_perf_measures_the_regional_diagnoser_on_its_synthetic_cohort() -> None:
    """``cdsf-bench perf`` (and the CUDA tests) build methods on the synthetic cohort: its grid
    lies on the MNI brain box, so every atlas region has voxels at any size."""
    registry = default_registry()
    shape = (20, 24, 24)
    settings = PerfSettings(synth="none", diag="regional", coupling="single", size=shape, device="cpu")
    cohort, labels, splits = synthetic_cohort(shape, 4, seed=0)
    modules = assemble(
        resolve_config(settings, registry), registry, cohort, labels, splits, torch.device("cpu")
    )
    expected = region_weights(brain_box_affine(shape), shape, REGIONS, soft=False)
    np.testing.assert_allclose(modules.coupling.modules()["diagnoser"].weights.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "method",
    [
        ["--synth", "none", "--coupling", "single"],
        ["--synth", "none", "--coupling", "oracle"],
        ["--synth", "ism", "--joint"],
    ],
    ids=["single", "oracle", "joint"],
)
def test_it_runs_end_to_end(method: list[str], tiny_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--diag", "regional", *method, *tiny_args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"]["diag"] == "regional"
    assert 0.0 <= metrics["diagnosis"]["auc"] <= 1.0
