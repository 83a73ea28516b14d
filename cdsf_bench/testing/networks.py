"""The checks of a synthesiser, a diagnoser and a component's search space."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cdsf_bench.interfaces import Choice, Component, FloatRange, IntRange
from cdsf_bench.testing.asserts import (
    SHAPE,
    as_component,
    assert_diagnosis,
    assert_equal,
    assert_volume,
    eval_logits,
    eval_output,
    kind_of,
    plain,
    round_trip,
    volumes,
)


def check_space(component: Component) -> None:
    """The component's search space names settings of its factory, each default inside it.

    A range needs low < high (low > 0 on a log scale) and a default of its kind (an integer
    for ``IntRange``, a number for ``FloatRange``) between its ends; a choice two distinct
    values, of the default's kind, the default among them.
    """
    settings = component.parameters()
    for key, param in component.space.items():
        where = f"search space of '{component.name}', '{key}'"
        assert key in settings, (
            f"{where}: not a setting of the factory (settings with defaults: "
            f"{', '.join(sorted(settings)) or 'none'})"
        )
        default = settings[key]
        if isinstance(param, Choice):
            values = [plain(v) for v in param.values]
            assert len({repr(v) for v in values}) >= 2, f"{where}: a choice needs two distinct values"
            for value in values:
                assert kind_of(value) == kind_of(plain(default)), (
                    f"{where}: choice {value!r} is not of the default's type ({default!r})"
                )
            assert plain(default) in values, f"{where}: the default {default!r} is not among {values}"
        elif isinstance(param, FloatRange | IntRange):
            assert param.low < param.high, f"{where}: low {param.low} is not below high {param.high}"
            assert not param.log or param.low > 0, f"{where}: a log scale needs low > 0"
            wanted = int if isinstance(param, IntRange) else (int, float)
            assert isinstance(default, wanted) and not isinstance(default, bool), (
                f"{where}: the default {default!r} is not a {'n integer' if wanted is int else ' number'}"
            )
            assert param.low <= default <= param.high, (
                f"{where}: the default {default} is outside [{param.low}, {param.high}]"
            )
        else:
            raise AssertionError(f"{where}: {param!r} is no FloatRange, IntRange or Choice")


def check_synthesiser(
    factory: Component | Callable[..., nn.Module],
    *,
    shape: tuple[int, int, int] = SHAPE,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **params: Any,
) -> None:
    """A synthesiser (``factory(**params)``) maps MRI [B,1,D,H,W] to PET of that shape in [-1, 1]."""
    component = as_component(factory, "synthesiser")
    device = torch.device(device)
    mri = volumes(2, 1, shape, device, seed)

    def build(build_seed: int) -> nn.Module:
        torch.manual_seed(build_seed)
        module = component.factory(**params)
        assert isinstance(module, nn.Module), f"synthesiser '{component.name}': the factory gave {module!r}"
        return module.to(device)

    module = build(seed)
    module.train()
    output = module(mri)
    assert_volume(f"synthesiser '{component.name}' (training mode)", output, mri)
    loss = getattr(module, "training_loss", None)
    objective = loss(mri, mri.clamp(-1, 1)).mean() if callable(loss) else output.float().mean()
    objective.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()), (
        f"synthesiser '{component.name}': no parameter gets a gradient in training mode"
    )
    expected = eval_output(module, mri, seed)
    assert_volume(f"synthesiser '{component.name}' (evaluation mode)", expected, mri)
    alone = eval_output(module, mri[:1], seed)
    assert_equal(f"synthesiser '{component.name}': a subject's PET depends on the batch", alone, expected[:1])
    assert_equal(
        f"synthesiser '{component.name}': the same seed gives another output",
        eval_output(build(seed), mri, seed),
        eval_output(build(seed), mri, seed),
    )
    restored = build(seed + 1)
    restored.load_state_dict(round_trip(module.state_dict()))
    assert_equal(
        f"synthesiser '{component.name}': the state does not survive a checkpoint",
        eval_output(restored, mri, seed),
        expected,
    )
    check_space(component)


def check_diagnoser(
    factory: Component | Callable[..., nn.Module],
    *,
    shape: tuple[int, int, int] = SHAPE,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **params: Any,
) -> None:
    """A diagnoser, ``factory(in_channels, input_shape, num_classes, **params)``, gives logits, features."""
    component = as_component(factory, "diagnoser")
    device = torch.device(device)
    for in_channels in (1, 2):
        for num_classes in (2, 3):
            name = f"diagnoser '{component.name}' ({in_channels} channel(s), {num_classes} classes)"
            inputs = volumes(4, in_channels, shape, device, seed)

            def build(
                build_seed: int, in_channels: int = in_channels, num_classes: int = num_classes
            ) -> nn.Module:
                torch.manual_seed(build_seed)
                module = component.factory(
                    in_channels=in_channels, input_shape=shape, num_classes=num_classes, **params
                )
                assert isinstance(module, nn.Module), f"{component.name}: the factory gave {module!r}"
                return module.to(device)

            module = build(seed)
            module.train()
            out = module(inputs)
            assert_diagnosis(name, out, len(inputs), num_classes, device)
            F.cross_entropy(out.logits.float(), torch.tensor([0, 1, 0, 1], device=device)).backward()
            assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()), (
                f"{name}: no parameter gets a gradient from the logits"
            )
            expected = eval_logits(module, inputs)
            assert_diagnosis(name, module(inputs), len(inputs), num_classes, device)
            assert_equal(
                f"{name}: a subject's logits depend on the batch in evaluation mode",
                eval_logits(module, inputs[:1]),
                expected[:1],
            )
            assert_equal(
                f"{name}: the same seed gives other logits",
                eval_logits(build(seed), inputs),
                eval_logits(build(seed), inputs),
            )
            restored = build(seed + 1)
            restored.load_state_dict(round_trip(module.state_dict()))
            assert_equal(
                f"{name}: the state does not survive a checkpoint", eval_logits(restored, inputs), expected
            )
    check_space(component)
