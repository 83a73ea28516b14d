"""The memo of a frozen generator's predictions: it saves work and changes no result.

A remembered output must be the one recomputing would give, and must be given only while the
network is exactly as it was: the same weights, buffers and mode. The decoupled coupling's
validation predictions are checked to run G once for a batch it meets again, and again after
a synthesis step has moved G.
"""

from __future__ import annotations

import torch
from test_baselines import batch, decoupled
from torch import nn

from cdsf_plugins.memo import FrozenOutputs


class Counted:
    """``compute`` for a memo: the network's output, counting how often it really ran."""

    def __init__(self, network: nn.Module, inputs: torch.Tensor) -> None:
        self.network, self.inputs, self.calls = network, inputs, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        with torch.no_grad():
            return self.network(self.inputs)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2), nn.Conv3d(2, 1, 1))


def test_an_input_seen_again_with_the_same_network_is_not_recomputed() -> None:
    net = network().eval()
    memo = FrozenOutputs(net)
    inputs = torch.rand(2, 1, 6, 6, 6)
    compute = Counted(net, inputs)
    first = memo(inputs, compute)
    first.add_(1.0)  # a caller changing its copy does not change what is remembered
    again = memo(inputs.clone(), compute)
    assert compute.calls == 1
    assert torch.equal(again, compute.network(inputs).detach())
    other = torch.rand(2, 1, 6, 6, 6)
    assert torch.equal(memo(other, Counted(net, other)), net(other).detach())


def test_new_weights_buffers_or_mode_are_recomputed() -> None:
    net = network().eval()
    memo = FrozenOutputs(net)
    inputs = torch.rand(2, 1, 6, 6, 6)
    compute = Counted(net, inputs)
    memo(inputs, compute)
    with torch.no_grad():
        net[0].weight[0, 0, 1, 1, 1] += 0.5  # an optimiser's in-place step
    assert torch.equal(memo(inputs, compute), net(inputs).detach()) and compute.calls == 2
    with torch.no_grad():
        net[1].running_mean += 0.1  # a normalisation statistic only
    assert torch.equal(memo(inputs, compute), net(inputs).detach()) and compute.calls == 3
    net.train()
    memo(inputs, compute)
    assert compute.calls == 4


def test_nothing_is_kept_past_the_memory_bound() -> None:
    net = network().eval()
    inputs = torch.rand(2, 1, 6, 6, 6)
    memo = FrozenOutputs(net, max_bytes=inputs.numel() * 4 - 1)
    compute = Counted(net, inputs)
    memo(inputs, compute)
    memo(inputs, compute)
    assert compute.calls == 2


def test_the_decoupled_prediction_runs_the_frozen_generator_once_per_batch() -> None:
    coupling = decoupled()
    forwards: list[int] = []
    coupling.synthesiser.register_forward_hook(lambda *_: forwards.append(1))
    for module in coupling.modules().values():
        module.eval()
    with torch.no_grad():
        first = coupling.predict(batch())
        second = coupling.predict(batch())
    assert len(forwards) == 1
    assert torch.equal(first.synthetic, second.synthetic)
    assert torch.equal(first.probability, second.probability)
    real = batch()
    real.has_pet[:] = True
    real.pet = real.pet_truth
    coupling.synthesis_step(real)  # G learns (one forward): its old predictions no longer hold
    for module in coupling.modules().values():
        module.eval()
    with torch.no_grad():
        third = coupling.predict(batch())
        assert len(forwards) == 3
        assert torch.equal(third.synthetic, coupling.synthesiser(batch().mri))
