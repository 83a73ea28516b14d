"""The training recipe the engine applies around every coupling's steps, knowing no model.

Four remedies for noisy, slowly converging training (issue 34), each off by default, so that a
run without them trains exactly as the engine's loop alone does:

- **Learning-rate warm-up** (``train.warmup_epochs``): every optimiser of a stage steps at
  its learning rate times min(1, t / (warmup_epochs x batches per epoch)), t the stage's step
  count from 1. The factor scales whatever a coupling's scheduler set and is undone after
  each step, so the schedulers and the checkpointed optimisers hold the unscaled rates; it
  depends on (epoch, step) alone, so a resumed run continues the same warm-up.
- **Weight averaging** (``train.ema_decay``): an exponential moving average of each stage's
  modules after every step (``torch.optim.swa_utils.AveragedModel`` with
  ``get_ema_multi_avg_fn``, running statistics averaged too), validated and selected in
  place of the trained weights; the averages are checkpointed with the run.
- **Patience from above chance** (``train.patience_from = "above_chance"``): an epoch
  without improvement counts towards early stopping only once the best validation value
  has beaten the metric's chance level (``metrics.CHANCE_LEVEL``), so a run that has not
  started learning is not stopped at chance. A metric without a chance level (synthesis)
  counts from the start.
- **Batch-norm re-estimation** (``evaluate.batchnorm_reestimation``): after a stage's
  selected state is restored, ``cdsf_bench.batchnorm.reestimate`` on its modules.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cdsf_bench.metrics import CHANCE_LEVEL, HIGHER_IS_BETTER
from cdsf_bench.settings import RunConfig


@dataclass(frozen=True)
class Recipe:
    """The recipe's settings, read from a run's ``[train]`` and ``[evaluate]``."""

    warmup_epochs: int = 0
    ema_decay: float = 0.0  # 0: no averaging
    patience_from: str = "start"
    batchnorm_reestimation: bool = False

    @classmethod
    def of(cls, run: RunConfig) -> Recipe:
        train = run.train
        return cls(
            warmup_epochs=train.warmup_epochs,
            ema_decay=train.ema_decay,
            patience_from=train.patience_from,
            batchnorm_reestimation=run.evaluate.batchnorm_reestimation,
        )

    def warmup_factor(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The learning-rate factor of a stage's ``step`` of ``epoch`` (1 after the warm-up)."""
        if not self.warmup_epochs:
            return 1.0
        return min(1.0, (epoch * steps_per_epoch + step + 1) / (self.warmup_epochs * steps_per_epoch))

    def counts_towards_patience(self, metric: str, best: float | None) -> bool:
        """Whether an epoch without improvement on ``metric`` counts, the best so far being ``best``."""
        chance = CHANCE_LEVEL.get(metric)
        if self.patience_from == "start" or chance is None:
            return True
        if best is None:
            return False
        return best > chance if HIGHER_IS_BETTER[metric] else best < chance


#: the engine without remedies: training exactly as the loop alone does
NO_RECIPE = Recipe()


@contextlib.contextmanager
def scaled_learning_rates(optimisers: Mapping[str, torch.optim.Optimizer], factor: float) -> Iterator[None]:
    """Every parameter group's learning rate times ``factor`` inside the block, restored exactly after."""
    if factor == 1.0:
        yield
        return
    groups = [group for optimiser in optimisers.values() for group in optimiser.param_groups]
    rates = [group["lr"] for group in groups]
    for group, rate in zip(groups, rates, strict=True):
        group["lr"] = rate * factor
    try:
        yield
    finally:
        for group, rate in zip(groups, rates, strict=True):
            group["lr"] = rate


class Averages:
    """The exponential moving averages of one stage's modules (``Recipe.ema_decay``)."""

    def __init__(self, modules: Mapping[str, nn.Module], decay: float) -> None:
        self.modules = dict(modules)
        self.averaged = {
            key: AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
            for key, module in self.modules.items()
        }

    def update(self) -> None:
        """Average in the modules' weights after a step (the first update copies them)."""
        for key, module in self.modules.items():
            self.averaged[key].update_parameters(module)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the stage's modules inside the block, the trained ones after it.

        Before the first update there is no average and the trained weights stay.
        """
        if any(int(average.n_averaged) == 0 for average in self.averaged.values()):
            yield
            return
        trained = {key: copy.deepcopy(module.state_dict()) for key, module in self.modules.items()}
        for key, module in self.modules.items():
            module.load_state_dict(self.averaged[key].module.state_dict())
        try:
            yield
        finally:
            for key, module in self.modules.items():
                module.load_state_dict(trained[key])

    def state_dict(self) -> dict[str, Any]:
        return {key: average.state_dict() for key, average in self.averaged.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, average in self.averaged.items():
            average.load_state_dict(state[key])
