"""Batch-norm statistics re-estimated on the training subjects after selection.

Trained with small batches, augmented, and a momentum of 0.1, a network's running statistics
follow its last few training batches: not what its selected weights compute on the subjects
it learnt from, and the probabilities it predicts inherit the mismatch (issue 36).
:func:`reestimate` replaces them by a cumulative average over one pass of a stage's training
subjects, fed exactly as prediction feeds them: the coupling's ``predict`` on unaugmented
batches, without gradients, every module in evaluation mode except the batch-norm layers of
the modules named. Weights and every other buffer stay as they are; a layer the pass never
reaches (an adversary that prediction does not use) keeps its statistics.

PyTorch's cumulative average (``momentum=None``) weights every batch alike: the running mean
is the mean of the batches' means, the running variance the mean of their unbiased
variances. Every process of a data-parallel run passes over all of the subjects in the same
batches (``DevicePipeline.reference_batches``), so each computes the statistics of one
process, with no communication.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cdsf_bench.data.pipeline import DevicePipeline, Subjects
from cdsf_bench.interfaces import Coupling


def batchnorm_layers(modules: Mapping[str, nn.Module]) -> list[_BatchNorm]:
    """The batch-norm layers of ``modules`` that keep running statistics, each once."""
    layers: dict[int, _BatchNorm] = {}
    for module in modules.values():
        for layer in module.modules():
            if isinstance(layer, _BatchNorm) and layer.track_running_stats:
                layers[id(layer)] = layer
    return list(layers.values())


def reestimate(
    coupling: Coupling, pipeline: DevicePipeline, modules: Mapping[str, nn.Module], subjects: Subjects
) -> int:
    """Re-estimate the running statistics of every batch-norm layer of ``modules`` over the
    training subjects ``subjects``; the number of layers re-estimated (those the pass reached)."""
    layers = batchnorm_layers(modules)
    if not layers:
        return 0
    networks = {id(m): m for m in [*coupling.modules().values(), *modules.values()]}
    was_training = {key: network.training for key, network in networks.items()}
    kept = [(copy.deepcopy(layer.state_dict()), layer.momentum) for layer in layers]
    for network in networks.values():
        network.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        with torch.no_grad():
            for batch in pipeline.reference_batches(subjects):
                coupling.predict(batch)
    finally:
        reached = [bool(layer.num_batches_tracked) for layer in layers]
        for layer, (state, momentum), ran in zip(layers, kept, reached, strict=True):
            layer.momentum = momentum
            if not ran:
                layer.load_state_dict(state)
        for key, network in networks.items():
            network.train(was_training[key])
    return sum(reached)
