"""The engine's training recipe (``cdsf_bench.recipe``): warm-up, weight averaging, patience
from above chance, and a run with all of them that is killed and resumed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cdsf_bench import config as cfg
from cdsf_bench import protocol
from cdsf_bench.errors import ConfigError
from cdsf_bench.recipe import NO_RECIPE, Averages, Recipe, scaled_learning_rates
from cdsf_bench.registry import default_registry
from cdsf_bench.results import load_torch
from cdsf_bench.run_folder import RunFolder


def test_warmup_rises_linearly_to_one_over_its_epochs():
    recipe = Recipe(warmup_epochs=2)
    factors = [recipe.warmup_factor(epoch, step, 4) for epoch in range(3) for step in range(4)]
    assert factors == [1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert all(NO_RECIPE.warmup_factor(epoch, 0, 4) == 1.0 for epoch in range(3))


def test_warmup_scales_the_schedulers_rate_and_restores_it_exactly():
    parameter = nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.SGD([parameter], lr=0.3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=1, gamma=0.5)
    optimiser.step()  # no gradient yet: no change
    scheduler.step()
    scheduled = optimiser.param_groups[0]["lr"]
    with scaled_learning_rates({"g": optimiser}, 0.1):
        assert optimiser.param_groups[0]["lr"] == scheduled * 0.1
        parameter.grad = torch.ones(1)
        optimiser.step()
    assert optimiser.param_groups[0]["lr"] == scheduled  # exactly, not scheduled * 0.1 / 0.1
    assert torch.allclose(parameter.detach(), torch.tensor([-scheduled * 0.1]))
    assert scheduler.get_last_lr() == [scheduled]


@pytest.mark.parametrize(
    ("metric", "best", "counts"),
    [
        ("auc", None, False),
        ("auc", 0.5, False),
        ("auc", 0.51, True),
        ("mcc", 0.0, False),
        ("mae", None, True),
    ],
)
def test_patience_counts_only_once_the_best_beats_chance(metric: str, best: float | None, counts: bool):
    assert Recipe(patience_from="above_chance").counts_towards_patience(metric, best) is counts
    assert NO_RECIPE.counts_towards_patience(metric, best)


def test_averages_are_the_exponential_moving_average_swapped_in_and_out():
    network = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    averages = Averages({"net": network}, decay=0.9)
    weight = network[0].weight
    with averages.swapped_in():  # nothing averaged yet: the trained weights
        assert torch.equal(network[0].weight, weight)
    first = weight.detach().clone()
    averages.update()
    with torch.no_grad():
        weight.add_(1.0)
    averages.update()
    trained = weight.detach().clone()
    with averages.swapped_in():
        torch.testing.assert_close(network[0].weight.detach(), 0.9 * first + 0.1 * trained)
    assert torch.equal(network[0].weight.detach(), trained)
    again = Averages({"net": network}, decay=0.9)
    again.load_state_dict(averages.state_dict())
    with again.swapped_in():
        torch.testing.assert_close(network[0].weight.detach(), 0.9 * first + 0.1 * trained)


class _Stop(Exception):
    pass


SETTINGS = (
    "train.epochs=3",
    "train.patience=0",
    "train.ema_decay=0.8",
    "train.warmup_epochs=2",
    "train.patience_from=above_chance",
    "evaluate.batchnorm_reestimation=true",
)


def _train(folder, *, stop_after: int | None = None, resume: bool = False):
    registry = default_registry()
    run = cfg.resolve(registry, assignments=SETTINGS, flags={"preset": "tiny", "method.synth": "none"})
    assembly = protocol.prepare(run, registry, torch.device("cpu")).assembly
    assert assembly.recipe == Recipe(2, 0.8, "above_chance", True)
    run_folder = RunFolder.prepare(run.toml(), folder, resume)

    def on_epoch(_stage, row) -> None:
        if stop_after is not None and row["epoch"] == stop_after:
            raise _Stop

    trainer = protocol.train(assembly, run_folder, resume=resume, on_epoch=on_epoch)
    modules = assembly.coupling.modules()
    states = {k: {n: v.clone() for n, v in m.state_dict().items()} for k, m in modules.items()}
    return trainer, states


def test_a_stopped_and_resumed_run_with_the_whole_recipe_equals_an_uninterrupted_one(tmp_path):
    whole, whole_states = _train(tmp_path / "whole")
    with pytest.raises(_Stop):
        _train(tmp_path / "killed", stop_after=0)
    checkpoint = load_torch(RunFolder(tmp_path / "killed").checkpoint_path)
    assert checkpoint["next_epoch"] == 1 and "averaged" in checkpoint
    resumed, resumed_states = _train(tmp_path / "killed", resume=True)
    drop = ("seconds",)
    assert [{k: v for k, v in row.items() if k not in drop} for row in resumed.history] == [
        {k: v for k, v in row.items() if k not in drop} for row in whole.history
    ]
    assert resumed.selections == whole.selections and whole.selections[-1]["batchnorm_reestimated"] > 0
    for name, state in whole_states.items():
        for key, value in state.items():
            assert torch.equal(value, resumed_states[name][key]), (name, key)


def test_an_unknown_patience_rule_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="train.patience_from 'never'"):
        cfg.resolve(default_registry(), assignments=("train.patience_from=never",), flags={"preset": "tiny"})
