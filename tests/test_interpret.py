"""``cdsf-bench interpret``'s parts: capture, attribution and the planted-truth scores.

The invariant the scores rest on: a diagnoser that by construction reads one region of one
channel gets, from integrated gradients, all of its positive attribution in that region
(share 1, the pointing game hit), while a channel it reads evenly over the brain scores at
chance, as random maps do. Maps repeat bit for bit on the CPU. What the coupling fed its
diagnoser is captured exactly and its channels named by what they equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import training_context
from torch import Tensor, nn

from cdsf_bench.data.grid import reference_grid
from cdsf_bench.data.phantom import phantom_settings
from cdsf_bench.data.regions import region_masks
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Batch, Coupling, DiagnoserOutput, Prediction, TrainingStage
from cdsf_bench.interpret.attribution import AttributionSettings, attribute, check_method, parse_methods
from cdsf_bench.interpret.capture import CONSTANT, MRI, PET, capture
from cdsf_bench.interpret.scoring import (
    ATROPHY,
    HYPOMETABOLISM,
    planted_regions,
    planted_truth,
    random_map,
    score,
)

GRID = reference_grid(8.0)
BRAIN = np.ones(GRID.shape, dtype=bool)


class OneRegion(nn.Module):
    """Logits (-m, m), m = the mean of channel 0 over the hippocampus plus ``spread`` times the
    mean of channel 1 over the whole grid: a diagnoser whose evidence is known voxel by voxel."""

    def __init__(self, spread: float = 0.0) -> None:
        super().__init__()
        (mask,) = region_masks(GRID.affine, GRID.shape, BRAIN, ["hippocampus"]).values()
        self.register_buffer("weight", torch.from_numpy(mask / mask.sum()).float())
        self.spread = spread

    def forward(self, x: Tensor) -> DiagnoserOutput:
        m = (x[:, 0] * self.weight).sum(dim=(1, 2, 3))
        if x.shape[1] > 1:
            m = m + self.spread * x[:, 1].mean(dim=(1, 2, 3))
        return DiagnoserOutput(torch.stack([-m, m], dim=1), m[:, None])


def positive_input(seed: int = 0) -> Tensor:
    """Two channels of intensities in [0.2, 1]: every voxel's IG attribution has the sign of its weight."""
    generator = torch.Generator().manual_seed(seed)
    return 0.2 + 0.8 * torch.rand((1, 2, *GRID.shape), generator=generator)


def test_a_diagnoser_that_reads_one_region_scores_1_there_and_chance_elsewhere():
    truth = planted_truth(phantom_settings(), GRID.affine, BRAIN)
    settings = AttributionSettings(("ig",), 8.0, ig_steps=8)
    mri_map, pet_map = attribute("ig", OneRegion(spread=1.0), "d", positive_input(), settings)

    assert score(mri_map, truth[ATROPHY]) == {"share": pytest.approx(1.0), "hit": 1.0}
    assert score(mri_map, truth[HYPOMETABOLISM])["share"] == 0.0  # it reads nothing there
    # read evenly over the grid: as much attribution in the planted regions as voxels there
    chance = truth[HYPOMETABOLISM].chance_share
    assert score(pet_map, truth[HYPOMETABOLISM])["share"] == pytest.approx(chance, rel=0.1)
    assert truth[HYPOMETABOLISM].chance_share < 0.1  # so 1 is far above chance
    rng = np.random.default_rng(0)
    shares = [score(random_map(rng, GRID.shape), truth[ATROPHY])["share"] for _ in range(20)]
    assert np.mean(shares) == pytest.approx(truth[ATROPHY].chance_share, rel=0.1)


def test_integrated_gradients_are_complete_for_the_linear_reader():
    """IG's completeness: the attributions sum to the logit's change from the zero baseline."""
    inputs = positive_input(1)
    diagnoser = OneRegion(spread=0.5)
    maps = attribute("ig", diagnoser, "d", inputs, AttributionSettings(("ig",), 8.0, ig_steps=4))
    assert maps.sum() == pytest.approx(float(diagnoser(inputs).logits[0, 1]), rel=1e-4)


def test_occlusion_keeps_most_of_the_read_regions_attribution_inside_it():
    truth = planted_truth(phantom_settings(), GRID.affine, BRAIN)
    maps = attribute(
        "occlusion", OneRegion(), "d", positive_input(), AttributionSettings(("occlusion",), 8.0)
    )
    # a 16 mm cube smears the 3 voxels the diagnoser reads at 8 mm over their neighbours
    assert score(maps[0], truth[ATROPHY])["share"] > 10 * truth[ATROPHY].chance_share
    assert not maps[1].any()  # channel 1 is not read at all


def test_maps_are_deterministic_on_the_cpu():
    torch.manual_seed(0)
    net = ConvDiagnoser()  # gradients through a real convolution, whose CPU kernels could race
    inputs = positive_input(2)
    settings = AttributionSettings(("ig", "gradcam"), 8.0, ig_steps=4)
    for method in ("ig", "gradcam"):
        first = attribute(method, net, "d", inputs, settings)
        assert np.array_equal(first, attribute(method, net, "d", inputs, settings))


class ConvDiagnoser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> DiagnoserOutput:
        features = torch.relu(self.conv(x)).mean(dim=(2, 3, 4))
        return DiagnoserOutput(self.head(features), features)


def test_gradcam_is_refused_for_a_diagnoser_without_a_convolution():
    with pytest.raises(InputError, match="no nn.Conv3d"):
        check_method("gradcam", OneRegion(), "diagnoser")
    check_method("gradcam", ConvDiagnoser(), "diagnoser")  # accepted


class Detached(OneRegion):
    """A diagnoser whose logits do not depend on its input through autograd."""

    def forward(self, x: Tensor) -> DiagnoserOutput:
        return super().forward(x.detach())


def test_a_diagnoser_captum_cannot_attribute_is_refused_with_the_reason():
    with pytest.raises(InputError, match="Captum cannot attribute diagnoser 'd' .* by ig"):
        attribute("ig", Detached(), "d", positive_input(), AttributionSettings(("ig",), 8.0, ig_steps=2))


def test_methods_are_parsed_known_and_once():
    assert parse_methods("occlusion, ig,ig") == ("ig", "occlusion")
    with pytest.raises(InputError, match="choose among"):
        parse_methods("ig,lime")


def test_the_truth_follows_the_runs_phantom_settings():
    default = planted_regions(phantom_settings())
    assert default[ATROPHY] == ("hippocampus", "entorhinal", "inferior_temporal", "ventricles")
    assert default[HYPOMETABOLISM] == ("posterior_cingulate", "precuneus", "angular")
    medial = planted_regions(
        phantom_settings({"medial_temporal_hypometabolism": 0.2, "temporal_atrophy": 0.0})
    )
    assert "inferior_temporal" not in medial[ATROPHY]
    assert medial[HYPOMETABOLISM][-2:] == ("hippocampus", "entorhinal")


class Stacking(Coupling):
    """MRI, then real PET or tanh(MRI) as the synthetic one, then an acquisition indicator."""

    needs_synthesiser = None

    def __init__(self, calls: int = 1) -> None:
        super().__init__(training_context(GRID.shape), None, lambda *a, **k: OneRegion())
        self.diagnoser = OneRegion()
        self.calls = calls

    def modules(self) -> dict[str, nn.Module]:
        return {"reader": self.diagnoser}

    def stages(self) -> list[TrainingStage]:
        return []

    def predict(self, batch: Batch) -> Prediction:
        synthetic = torch.tanh(batch.mri)
        pet = torch.where(batch.has_pet.view(-1, 1, 1, 1, 1), batch.pet, synthetic)
        indicator = torch.ones_like(batch.mri) * batch.has_pet.float().view(-1, 1, 1, 1, 1)
        logits = [self.diagnoser(torch.cat([batch.mri, pet, indicator], 1)).logits for _ in range(self.calls)]
        source = "real" if bool(batch.has_pet[0]) else "synthetic"
        return Prediction(logits[0].softmax(1)[:, 1], [source], synthetic)


def one_subject(has_pet: bool) -> Batch:
    volumes = positive_input(3)
    return Batch(
        mri=volumes[:, :1],
        pet=volumes[:, 1:] if has_pet else torch.zeros_like(volumes[:, 1:]),
        has_pet=torch.tensor([has_pet]),
        label=torch.tensor([1]),
        index=torch.tensor([0]),
    )


@pytest.mark.parametrize("has_pet", [True, False])
def test_capture_keeps_the_diagnosers_input_and_names_its_channels(has_pet):
    coupling = Stacking()
    batch = one_subject(has_pet)
    captured = capture(coupling, (coupling.diagnoser,), batch)
    (call,) = captured.calls
    assert call.name == "reader" and call.channels == (MRI, PET, CONSTANT)
    assert torch.equal(call.inputs[:, 0:1], batch.mri)
    assert captured.pet_source == ("real" if has_pet else "synthetic")
    assert coupling.diagnoser.training  # its mode is given back after the prediction


def test_every_call_of_a_diagnoser_is_captured_and_a_coupling_that_calls_none_is_refused():
    coupling = Stacking(calls=2)
    assert len(capture(coupling, (coupling.diagnoser,), one_subject(True)).calls) == 2
    with pytest.raises(InputError, match="no diagnoser input"):
        capture(coupling, (OneRegion(),), one_subject(True))  # a module the coupling never calls
