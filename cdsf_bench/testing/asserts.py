"""Assertions the conformance checks share: volumes, diagnoses, equality, a checkpoint's round trip."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cdsf_bench.interfaces import Component, DiagnoserOutput

#: the volume every check uses unless told otherwise: small, and not a cube (axes stay apart)
SHAPE = (16, 16, 12)


def as_component(factory: Component | Callable[..., Any], kind: str) -> Component:
    if isinstance(factory, Component):
        return factory
    return Component(getattr(factory, "__name__", kind), factory, f"the {kind} under test")


def volumes(size: int, channels: int, shape: tuple[int, int, int], device: torch.device, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed + 3)
    return (torch.rand(size, channels, *shape, generator=generator) * 2 - 1).to(device)


def eval_output(module: nn.Module, mri: Tensor, seed: int) -> Tensor:
    module.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        output: Tensor = module(mri)
    return output


def eval_logits(module: nn.Module, inputs: Tensor) -> Tensor:
    module.eval()
    with torch.no_grad():
        logits: Tensor = module(inputs).logits
    return logits


def assert_volume(where: str, volume: object, mri: Tensor) -> None:
    assert isinstance(volume, Tensor), f"{where}: gave {type(volume).__name__}, not a tensor"
    assert volume.shape == mri.shape, f"{where}: shape {tuple(volume.shape)}, not {tuple(mri.shape)}"
    assert volume.is_floating_point(), f"{where}: dtype {volume.dtype} is not floating point"
    assert volume.device == mri.device, f"{where}: on {volume.device}, not {mri.device}"
    assert bool(torch.isfinite(volume).all()), f"{where}: not finite"
    assert bool((volume.abs() <= 1).all()), f"{where}: values outside [-1, 1]"


def assert_diagnosis(where: str, out: object, size: int, num_classes: int, device: torch.device) -> None:
    assert isinstance(out, DiagnoserOutput), f"{where}: gave {type(out).__name__}, not a DiagnoserOutput"
    assert out.logits.shape == (size, num_classes), (
        f"{where}: logits of shape {tuple(out.logits.shape)}, not ({size}, {num_classes})"
    )
    assert out.features.dim() == 2 and out.features.shape[0] == size, (
        f"{where}: features of shape {tuple(out.features.shape)}, not ({size}, F)"
    )
    for label, tensor in (("logits", out.logits), ("features", out.features)):
        assert tensor.is_floating_point(), f"{where}: {label} of dtype {tensor.dtype}"
        assert tensor.device.type == device.type, f"{where}: {label} on {tensor.device}, not {device}"
        assert bool(torch.isfinite(tensor).all()), f"{where}: {label} not finite"


def assert_equal(where: str, got: Tensor, expected: Tensor) -> None:
    """Equal up to float rounding (a batch of one may take another kernel path than a batch of four)."""
    assert got.shape == expected.shape, f"{where} (shape {tuple(got.shape)}, not {tuple(expected.shape)})"
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (
        f"{where} (largest difference {float((got - expected).abs().max()):.3g})"
    )


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` through a checkpoint file, read back as ``cdsf-bench`` reads its checkpoints."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


def plain(value: Any) -> Any:
    """Tuples as lists, as a TOML config holds them."""
    return [plain(v) for v in value] if isinstance(value, list | tuple) else value


def kind_of(value: Any) -> str:
    """What a setting's value is, for comparing a choice with its default: numbers are alike."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
