"""Where a network's training time goes, layer by layer: ``python benchmarks/perf_layers.py``.

``cdsf-bench perf`` says how fast a whole step is; this script says which layers make it
so. It builds the synthesiser and the diagnoser as a run does (registry defaults, or
``--set`` overrides), runs one forward pass per precision variant with hooks that keep
every leaf module's input exactly as it arrives (dtype and memory layout included), then
times each leaf alone, forward + backward, and counts its FLOPs. A layer that receives its
input in the wrong layout pays the conversion inside its own time, so layout breaks show up
where they cost.

Variants: ``plain`` (float32, contiguous), ``mixed`` (bf16 autocast, channels_last_3d);
``--all-variants`` adds the two mixed-up ones. Times are the minimum over ``--repeats``
calls, the most load-robust statistic for microbenchmarks on a shared machine. The last
lines compare the sum of layer times with the whole network's forward + backward: the
difference is what runs between layers (residual additions, autograd, allocation).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cdsf_bench import config as cfg
from cdsf_bench.perf.harness import time_calls
from cdsf_bench.registry import default_registry

VARIANTS = {
    "plain": (False, False),
    "mixed": (True, True),
    "fp32+CL": (False, True),
    "bf16 plain": (True, False),
}


@dataclass
class LayerTime:
    name: str
    kind: str
    shape: tuple[int, ...]
    seconds: float
    gflop: float


def _autocast(enabled: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _first_output(output: object) -> torch.Tensor:
    """The tensor a leaf returns (a diagnoser's NamedTuple has its logits first)."""
    return output if isinstance(output, torch.Tensor) else output[0]  # type: ignore[index]


def capture_inputs(
    module: nn.Module, inputs: torch.Tensor, mixed: bool
) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """Every leaf module with the input it received in one forward pass, in call order."""
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []
    for name, leaf in module.named_modules():
        if list(leaf.children()):
            continue

        def hook(layer: nn.Module, args: tuple, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen.append((name, layer, args[0].detach().clone(memory_format=torch.preserve_format)))

        handles.append(leaf.register_forward_pre_hook(hook))
    try:
        with torch.no_grad(), _autocast(mixed):
            module(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def time_layers(module: nn.Module, inputs: torch.Tensor, mixed: bool, repeats: int) -> list[LayerTime]:
    """Forward + backward time and FLOPs of every leaf, each fed its captured input."""
    out = []
    for index, (name, layer, captured) in enumerate(capture_inputs(module, inputs, mixed)):
        needs_grad = index > 0 and captured.is_floating_point()
        x = captured.requires_grad_(needs_grad)
        with torch.no_grad(), _autocast(mixed):
            probe = _first_output(layer(x))
        if (
            not probe.requires_grad
            and not any(p.requires_grad for p in layer.parameters())
            and not needs_grad
        ):
            continue
        grad = torch.randn_like(probe)

        # an in-place layer (ReLU(inplace=True)) may not overwrite a leaf that needs a gradient;
        # it gets a copy, whose cost is then part of its time
        inplace = bool(getattr(layer, "inplace", False)) and needs_grad

        def step(
            layer: nn.Module = layer, x: torch.Tensor = x, grad: torch.Tensor = grad, inplace: bool = inplace
        ) -> None:
            layer.zero_grad(set_to_none=True)
            with _autocast(mixed):
                y = _first_output(layer(x.clone() if inplace else x))
            if y.requires_grad:
                y.backward(grad)

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        seconds = time_calls(step, repeats).best
        out.append(
            LayerTime(
                name, type(layer).__name__, tuple(captured.shape), seconds, counter.get_total_flops() / 1e9
            )
        )
    return out


def whole_network(module: nn.Module, inputs: torch.Tensor, mixed: bool, repeats: int) -> float:
    """Forward + backward of the whole network (a scalar loss of its first output)."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        with _autocast(mixed):
            y = _first_output(module(inputs))
        y.float().mean().backward()

    return time_calls(step, repeats).best


def build(kind: str, size: tuple[int, int, int], assignments: tuple[str, ...]) -> tuple[nn.Module, int]:
    """The configured synthesiser or diagnoser and its input channels."""
    registry = default_registry()
    config = cfg.resolve(registry, None, assignments, {})
    if kind == "synth":
        name, params = config.plugin("synth")
        return registry.get("synthesiser", name).factory(**params), 1
    name, params = config.plugin("diag")
    factory = registry.get("diagnoser", name).factory
    return factory(in_channels=2, input_shape=size, num_classes=2, **params), 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 64], metavar=("D", "H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--net", choices=("synth", "diag", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--all-variants", action="store_true", help="also fp32+channels_last and bf16 contiguous"
    )
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.size)
    variants = VARIANTS if args.all_variants else {k: VARIANTS[k] for k in ("plain", "mixed")}
    nets = ("synth", "diag") if args.net == "both" else (args.net,)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, size {list(size)}, batch {args.batch}"
    )
    for kind in nets:
        torch.manual_seed(0)
        base, channels = build(kind, size, tuple(args.assignments))
        data = torch.rand(args.batch, channels, *size) * 2 - 1
        results: dict[str, list[LayerTime]] = {}
        totals: dict[str, float] = {}
        for label, (mixed, channels_last) in variants.items():
            module = base
            x = data.contiguous()
            if channels_last:
                module = base.to(memory_format=torch.channels_last_3d)
                x = data.contiguous(memory_format=torch.channels_last_3d)
            else:
                module = base.to(memory_format=torch.contiguous_format)
            module.train()
            results[label] = time_layers(module, x, mixed, args.repeats)
            totals[label] = whole_network(module, x, mixed, args.repeats)
        first = next(iter(results.values()))
        header = f"{'layer':28s} {'type':16s} {'input':22s} {'GFLOP':>7s}"
        for label in results:
            header += f" | {label + ' ms':>12s} {'GF/s':>6s} {'share':>6s}"
        print(f"\n{kind}: {type(base).__name__}\n{header}")
        sums = {label: sum(t.seconds for t in layers) for label, layers in results.items()}
        for row, layer in enumerate(first):
            line = (
                f"{layer.name:28s} {layer.kind:16s} {'x'.join(map(str, layer.shape)):22s} {layer.gflop:7.2f}"
            )
            for label, layers in results.items():
                t = layers[row]
                rate = t.gflop / t.seconds if t.gflop else 0.0
                line += f" | {t.seconds * 1e3:12.2f} {rate:6.1f} {t.seconds / sums[label]:6.1%}"
            print(line)
        for label in results:
            flops = sum(t.gflop for t in results[label])
            between = totals[label] - sums[label]
            print(
                f"{label:>10s}: sum of layers {sums[label] * 1e3:8.1f} ms"
                f" ({flops / sums[label]:.1f} GFLOP/s), "
                f"whole network {totals[label] * 1e3:8.1f} ms, between layers {between * 1e3:8.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
