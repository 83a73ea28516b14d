"""Batch-norm statistics re-estimated after selection (``cdsf_bench.batchnorm``, issue 36).

A two-network coupling on a real device pipeline: a diagnoser whose first batch-norm layer
follows a convolution, so its statistics can be computed directly from the training
subjects' MRI; a frozen feature network with batch norm that prediction also runs; and an
adversary with batch norm that prediction never runs.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cdsf_bench.batchnorm import batchnorm_layers, reestimate
from cdsf_bench.data.pipeline import DevicePipeline
from cdsf_bench.data.splits import make_splits
from cdsf_bench.interfaces import Batch, Cohort, Prediction
from cdsf_bench.settings import AugmentSettings

SHAPE = (8, 8, 8)


def _pipeline(shard: tuple[int, int] = (0, 1)) -> DevicePipeline:
    rng = np.random.default_rng(0)
    n = 40
    labels = np.array([0, 1] * (n // 2))
    has_pet = rng.random(n) < 0.5
    mri = rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float16)
    truth = rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float16)
    pet = np.where(has_pet[:, None, None, None], truth, np.float16(0))
    table = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)], "diagnosis": labels})
    cohort = Cohort(table, mri, pet, has_pet, np.eye(4), np.ones(SHAPE, bool), pet_truth=truth)
    splits = make_splits(cohort.participants, labels, val=0.2, test=0.2, seed=0)
    # augmentation on: the pass must not use it
    augment = AugmentSettings(enabled=True, rotate_deg=5.0, translate_vox=1.0, intensity=0.1)
    return DevicePipeline(
        cohort, labels, splits, device=torch.device("cpu"), seed=0, batch_size=4, augment=augment, shard=shard
    )


class _Diagnoser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        self.norm = nn.BatchNorm3d(3)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 1))
        self.register_buffer("scale", torch.tensor(2.0))  # a buffer that is no norm's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x))).squeeze(1) * self.scale


def _bn_network() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 1, 3, padding=1), nn.BatchNorm3d(1))


class _Coupling:
    subjects = "all"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.diagnoser = _Diagnoser()
        self.features = _bn_network()  # frozen: prediction runs it, nothing re-estimates it
        self.adversary = _bn_network()  # trained, never run by prediction
        self.features.requires_grad_(False)
        for network in self.modules().values():  # running statistics away from a fresh pass
            network.train()
            with torch.no_grad():
                for layer in batchnorm_layers({"n": network}):
                    layer.running_mean.uniform_(-3, 3)
                    layer.running_var.uniform_(2, 5)

    def modules(self) -> dict[str, nn.Module]:
        return {"diagnoser": self.diagnoser, "features": self.features, "adversary": self.adversary}

    def predict(self, batch: Batch) -> Prediction:
        x = torch.cat([batch.mri, self.features(batch.mri)], dim=1)
        probability = torch.sigmoid(self.diagnoser(x))
        return Prediction(probability=probability, synthetic=None, pet_source=["none"] * len(probability))

    def trained(self) -> dict[str, nn.Module]:
        """What a stage trains and selects: the diagnoser and the adversary."""
        return {"diagnoser": self.diagnoser, "adversary": self.adversary}


def _state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in network.state_dict().items()}


def test_statistics_equal_a_fresh_pass_over_the_training_subjects():
    coupling, pipeline = _Coupling(), _pipeline()
    assert reestimate(coupling, pipeline, coupling.trained(), "all") == 1  # the adversary is never reached
    # directly: each batch's mean and unbiased variance of the convolution's output, averaged
    # over batches of every training subject (labelled or not), unaugmented, in cohort order
    rows = pipeline.rows("train")
    mri = torch.from_numpy(pipeline.mri.numpy()[rows].astype(np.float32)).unsqueeze(1)
    with torch.no_grad():
        inputs = torch.cat([mri, coupling.features.eval()(mri)], dim=1)
        activations = coupling.diagnoser.conv(inputs)
    chunks = np.array_split(np.arange(len(rows)), len(rows) // pipeline.batch_size)
    means = torch.stack([activations[c].mean(dim=(0, 2, 3, 4)) for c in chunks])
    variances = torch.stack([activations[c].transpose(0, 1).flatten(1).var(dim=1) for c in chunks])
    norm = coupling.diagnoser.norm
    torch.testing.assert_close(norm.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, variances.mean(0), rtol=1e-5, atol=1e-6)
    assert int(norm.num_batches_tracked) == len(chunks) and norm.momentum == 0.1


def test_weights_other_buffers_and_unreached_or_frozen_networks_are_untouched():
    coupling, pipeline = _Coupling(), _pipeline()
    coupling.diagnoser.train()
    coupling.features.eval()
    before = {name: _state(network) for name, network in coupling.modules().items()}
    reestimate(coupling, pipeline, coupling.trained(), "all")
    after = {name: _state(network) for name, network in coupling.modules().items()}
    assert all(torch.equal(before["features"][k], v) for k, v in after["features"].items())
    assert all(torch.equal(before["adversary"][k], v) for k, v in after["adversary"].items())
    norm_keys = {f"norm.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")}
    for key, value in after["diagnoser"].items():
        assert torch.equal(before["diagnoser"][key], value) != (key in norm_keys), key
    assert not any(p.requires_grad for p in coupling.features.parameters())
    assert coupling.diagnoser.training and not coupling.features.training  # modes restored


def test_reestimation_is_deterministic_and_does_not_depend_on_earlier_statistics():
    first, second = _Coupling(), _Coupling()
    with torch.no_grad():
        second.diagnoser.norm.running_mean.fill_(10.0)
    reestimate(first, _pipeline(), first.trained(), "all")
    reestimate(second, _pipeline(), second.trained(), "all")
    again = copy.deepcopy(first)
    reestimate(again, _pipeline(), again.trained(), "all")
    for one, other in ((first, second), (first, again)):
        for key, value in one.diagnoser.state_dict().items():
            assert torch.equal(value, other.diagnoser.state_dict()[key]), key


def test_every_data_parallel_process_computes_the_statistics_of_one_process():
    """Each process passes over every training subject in the same batches, whatever its rank."""
    one = _Coupling()
    reestimate(one, _pipeline(), one.trained(), "all")
    for rank in (0, 1):
        share = _Coupling()
        reestimate(share, _pipeline(shard=(rank, 2)), share.trained(), "all")
        for key, value in one.diagnoser.state_dict().items():
            assert torch.equal(value, share.diagnoser.state_dict()[key]), (rank, key)


@pytest.mark.parametrize("subjects", ["all", "with_pet"])
def test_the_pass_covers_the_stages_subjects(subjects: str):
    pipeline = _pipeline()
    seen = torch.cat([batch.index for batch in pipeline.reference_batches(subjects)])
    assert seen.tolist() == pipeline.rows("train", subjects).tolist()
    assert min(len(batch.index) for batch in pipeline.reference_batches(subjects)) >= 2
