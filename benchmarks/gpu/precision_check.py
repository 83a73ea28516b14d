"""bf16 against fp32 for every shipped network: forward and backward on the same weights and input.

Mixed precision is only as good as the kernels under it, and cuDNN 9.10's bf16 ``conv3d`` has
been reported to return silently wrong results on large shapes. So every synthesiser and
diagnoser in the registry is run once in float32 with TF32 off (the reference) and again in
each precision a run can use, from the same weights on the same random input, and the
largest relative error is reported:

- ``output``: ||out - ref|| / ||ref|| of the network's output (a diagnoser's logits);
- ``grad``: the same error of all parameters' gradients taken as one vector, the gradients of
  one fixed random projection of the output (so every output element counts); and the
  largest error of a single parameter's gradient, with its name. That one is often far
  larger: the gradient of a bias just before a normalisation is a sum that nearly cancels.

Candidates: ``bf16`` (autocast, contiguous memory), ``bf16_channels_last`` (autocast, NDHWC:
what a run does by default) and ``fp32_tf32`` (plain float32 with TF32 convolutions and matrix
multiplies allowed, as torch allows them on a GPU by default). bf16 operands give relative
output errors between about 1e-3 and 1e-2; an output error above ``OUTPUT_SUSPECT`` or a
whole-gradient error above ``GRAD_SUSPECT`` is flagged, NaN always (the exit status is then 1).

    python benchmarks/gpu/precision_check.py --device cuda --resolution 2 --out precision.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cdsf_bench.data.grid import reference_grid
from cdsf_bench.interfaces import bf16_autocast
from cdsf_bench.perf.settings import PerfSettings, resolve_config
from cdsf_bench.registry import Registry, default_registry

#: an output error above this is flagged: several times what bf16 rounding gives
OUTPUT_SUSPECT = 5e-2
#: a whole-gradient error above this is flagged. bf16 gradients of these networks are far less
#: exact than their outputs (0.1 to 0.2 on the CPU dry run, 16 mm grid: errors grow through the
#: backward pass and normalisations subtract near-equal sums), so only a wrong kernel passes it
GRAD_SUSPECT = 0.5


@dataclass(frozen=True)
class Candidate:
    """One precision a run can train in."""

    name: str
    bf16: bool
    channels_last: bool
    tf32: bool


CANDIDATES = (
    Candidate("bf16", bf16=True, channels_last=False, tf32=False),
    Candidate("bf16_channels_last", bf16=True, channels_last=True, tf32=False),
    Candidate("fp32_tf32", bf16=False, channels_last=False, tf32=True),
)


@contextlib.contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """TF32 convolutions and matrix multiplies allowed or not, restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64; NaN where either holds a NaN."""
    value, reference = value.double(), reference.double()
    denominator = reference.norm().item()
    return (value - reference).norm().item() / (denominator if denominator > 0 else 1.0)


def _ranked(error: float) -> float:
    """An error for ranking: NaN ranks above every number."""
    return math.inf if math.isnan(error) else error


def _logits(output: Any) -> torch.Tensor:
    """A network's output as one tensor: a diagnoser's logits, a synthesiser's volume."""
    return output.logits if hasattr(output, "logits") else output


def forward_backward(
    module: nn.Module, inputs: torch.Tensor, projection: torch.Tensor | None, candidate: Candidate | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Output, parameter gradients and the projection used, for one precision (None: the reference)."""
    device = inputs.device
    bf16 = candidate is not None and candidate.bf16
    layout = torch.channels_last_3d if candidate is not None and candidate.channels_last else None
    if layout is not None:
        module = module.to(memory_format=layout)  # type: ignore[call-overload]
        inputs = inputs.contiguous(memory_format=layout)
    module.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # any random layer draws alike in every precision
    with tf32(candidate is not None and candidate.tf32), bf16_autocast(device, bf16):
        output = _logits(module(inputs))
    output = output.float()
    if projection is None:
        generator = torch.Generator().manual_seed(1)
        projection = torch.randn(output.shape, generator=generator).to(device)
    (output * projection).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
    return output.detach(), grads, projection


def check_network(
    kind: str, name: str, module: nn.Module, inputs: torch.Tensor, candidates: tuple[Candidate, ...]
) -> dict[str, Any]:
    """One network's errors under every candidate precision against the fp32 reference."""
    module.train()
    reference_out, reference_grads, projection = forward_backward(copy.deepcopy(module), inputs, None, None)
    record: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "parameters": sum(p.numel() for p in module.parameters()),
        "input_shape": list(inputs.shape),
        "output_shape": list(reference_out.shape),
        "candidates": {},
    }
    for candidate in candidates:
        out, grads, _ = forward_backward(copy.deepcopy(module), inputs, projection, candidate)
        keys = list(reference_grads)
        grad_errors = {key: relative_error(grads[key], reference_grads[key]) for key in keys}
        worst = max(keys, key=lambda key: _ranked(grad_errors[key]))
        output_error = relative_error(out, reference_out)
        grad_error = relative_error(
            torch.cat([grads[key].flatten() for key in keys]),
            torch.cat([reference_grads[key].flatten() for key in keys]),
        )
        record["candidates"][candidate.name] = {
            "output_rel_error": output_error,
            "grad_rel_error": grad_error,
            "grad_max_rel_error": grad_errors[worst],
            "grad_worst_parameter": worst,
            "suspect": _ranked(output_error) > OUTPUT_SUSPECT or _ranked(grad_error) > GRAD_SUSPECT,
        }
    return record


def networks(
    registry: Registry, shape: tuple[int, int, int]
) -> Iterator[tuple[str, str, nn.Module | str, int]]:
    """Every registered synthesiser and diagnoser with its default settings, and its input channels.

    A network that cannot be built here (a missing optional dependency) is yielded as the
    reason, so the report says what was not checked and why.
    """
    for kind in ("synthesiser", "diagnoser"):
        for name in registry.names(kind):
            key = "synth" if kind == "synthesiser" else "diag"
            try:
                config = resolve_config(PerfSettings(**{key: name}), registry)  # type: ignore[arg-type]
                _, params = config.plugin(key)
                factory = registry.get(kind, name).factory
                if kind == "synthesiser":
                    yield kind, name, factory(**params), 1
                else:
                    yield kind, name, factory(in_channels=2, input_shape=shape, num_classes=2, **params), 2
            except Exception as error:  # noqa: BLE001  (reported, not hidden)
                yield kind, name, f"{type(error).__name__}: {error}", 0


def run(device: torch.device, resolution_mm: float, batch: int, seed: int) -> dict[str, Any]:
    """The report: every network's record, and the networks that could not be checked."""
    shape = reference_grid(resolution_mm).shape
    registry = default_registry()
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "resolution_mm": resolution_mm,
        "shape": list(shape),
        "batch": batch,
        "suspect_above": {"output": OUTPUT_SUSPECT, "grad": GRAD_SUSPECT},
        "networks": [],
        "not_checked": {},
    }
    for kind, name, built, channels in networks(registry, shape):
        if isinstance(built, str):
            report["not_checked"][f"{kind}:{name}"] = built
            continue
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        inputs = (torch.rand((batch, channels, *shape), generator=generator) * 2 - 1).to(device)
        try:
            report["networks"].append(check_network(kind, name, built.to(device), inputs, CANDIDATES))
        except Exception as error:  # noqa: BLE001  (one network's failure must not hide the rest)
            report["not_checked"][f"{kind}:{name}"] = f"{type(error).__name__}: {error}"
    report["suspect"] = [
        f"{r['kind']}:{r['name']}:{c}"
        for r in report["networks"]
        for c, v in r["candidates"].items()
        if v["suspect"]
    ]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resolution", type=float, default=4.0, help="grid resolution in mm")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the JSON report here (default: stdout)")
    args = parser.parse_args(argv)
    report = run(torch.device(args.device), args.resolution, args.batch, args.seed)
    text = json.dumps(report, indent=2, allow_nan=True)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text + "\n")
    for record in report["networks"]:
        errors = ", ".join(
            f"{c} out {v['output_rel_error']:.1e} grad {v['grad_rel_error']:.1e}"
            for c, v in record["candidates"].items()
        )
        print(f"{record['kind']} {record['name']}: {errors}", file=sys.stderr)
    for key, reason in report["not_checked"].items():
        print(f"not checked: {key}: {reason}", file=sys.stderr)
    return 1 if report["suspect"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
