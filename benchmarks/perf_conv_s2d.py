"""A faster, exact form of a convolution with few output channels: ``python benchmarks/perf_conv_s2d.py``.

``benchmarks/perf_layers.py`` shows that the ISM's last layer (Conv3d 8 -> 1, kernel 7, at
full resolution) takes most of the ISM's training time on CPU while doing a quarter of its
FLOPs. oneDNN vectorises a convolution over blocks of 16 output channels, so a layer with
one output channel computes sixteen and keeps one: forward and weight gradient cost as much
as an 8 -> 16 convolution.

The same layer can be computed on a space-to-depth view. With factor s, every s x s x s
block of output voxels becomes s^3 output channels of a convolution over s^3 * C_in input
channels at 1/s of each side, with kernel ceil((k + s - 1) / s). Its weight is the original
weight scattered into the larger one (zeros elsewhere), so the result is the same sum of
the same products: equal up to floating-point summation order, with the same parameters
(same state_dict). The extra multiplies by zero cost less than the wasted output channels.

This script checks the equality (float64) and times the original layer, the reformulated
layer, the ISM with its last layer swapped and, with ``--joint``, the joint training step, in
bf16 + channels_last_3d and in plain fp32. It is the evidence behind the recommendation in
the choice: the ISM and the U-Net use ``cdsf_plugins.space_to_depth.SpaceToDepthConv3d`` for
their last layer, which reformulates on CPU in channels-last memory. Here the plain layer and
the always-reformulated one are compared in both precisions and layouts.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cdsf_bench.perf.harness import time_calls
from cdsf_plugins.space_to_depth import SpaceToDepthConv3d


def sharing(conv: nn.Conv3d, reformulate: bool, factor: int = 2) -> nn.Conv3d:
    """The plain ``nn.Conv3d``, or the always-reformulated one, sharing ``conv``'s very parameters."""
    settings = dict(padding=conv.padding, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    if reformulate:
        new = SpaceToDepthConv3d(
            conv.in_channels, conv.out_channels, conv.kernel_size, factor=factor, always=True, **settings
        )
    else:
        new = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, **settings)
    new.weight = conv.weight
    new.bias = conv.bias
    return new


def _train_step(module: nn.Module, x: Tensor, mixed: bool) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            y = module(x)
        y.float().mean().backward()

    return step


def _joint_steps(size: tuple[int, int, int], batch: int, mixed: bool, channels_last: bool) -> tuple:
    """Two identical joint couplings on one batch, the second with its ISM's last layer swapped."""
    from cdsf_bench.assemble import assemble, configure_backends
    from cdsf_bench.perf import PerfSettings, synthetic_cohort
    from cdsf_bench.perf.cohort import typical_batches
    from cdsf_bench.perf.settings import resolve_config
    from cdsf_bench.registry import default_registry

    registry = default_registry()
    config = resolve_config(
        PerfSettings(size=size, batch=batch, bf16=mixed, channels_last=channels_last), registry
    )
    device = torch.device("cpu")
    configure_backends(device)  # the kernels a run uses
    cohort, labels, splits = synthetic_cohort(size, batch, 0)
    steps = []
    for reformulate in (False, True):
        torch.manual_seed(0)
        # built as a run builds it; the two couplings differ only in the last layer's form
        assembly = assemble(config, registry, cohort, labels, splits, device)
        decoder = assembly.coupling.synthesiser.decoder
        decoder[2] = sharing(decoder[2], reformulate)
        drawn = typical_batches(list(assembly.pipeline.train_batches(0)))[0]
        stage = assembly.coupling.stages()[0]
        steps.append(lambda stage=stage, drawn=drawn: stage.step(drawn))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 64], metavar=("D", "H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--joint", action="store_true", help="also time the whole joint training step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from cdsf_plugins.ism import ISM

    size = tuple(args.size)
    torch.manual_seed(0)
    conv = nn.Conv3d(8, 1, 7, padding=3, padding_mode="replicate")
    fast = sharing(conv, True, args.factor)
    x64 = torch.randn(2, 8, 12, 16, 8, dtype=torch.float64)
    exact = (conv.double()(x64) - fast.double()(x64)).abs().max().item()
    conv.float()
    fast.float()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; factor {args.factor}; "
        f"float64 max |difference| {exact:.2e}; same state_dict keys: "
        f"{list(conv.state_dict()) == list(fast.state_dict())}"
    )
    for mixed, channels_last, label in (
        (True, True, "bf16 + channels_last"),
        (False, False, "fp32 contiguous"),
    ):
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        x = (torch.rand(args.batch, 8, *size) * 2 - 1).contiguous(memory_format=fmt).requires_grad_()
        layer_times = [
            time_calls(_train_step(m.to(memory_format=fmt), x, mixed), args.repeats).best
            for m in (conv, fast)
        ]
        ism = ISM().to(memory_format=fmt)
        swapped = copy.deepcopy(ism)
        ism.decoder[2] = sharing(ism.decoder[2], False).to(memory_format=fmt)
        swapped.decoder[2] = sharing(swapped.decoder[2], True, args.factor).to(memory_format=fmt)
        mri = (torch.rand(args.batch, 1, *size) * 2 - 1).contiguous(memory_format=fmt)
        ism_times = [time_calls(_train_step(m, mri, mixed), args.repeats).best for m in (ism, swapped)]
        print(
            f"{label}: last layer {layer_times[0] * 1e3:.1f} -> {layer_times[1] * 1e3:.1f} ms "
            f"({layer_times[0] / layer_times[1]:.2f}x); ISM fwd+bwd {ism_times[0] * 1e3:.1f} -> "
            f"{ism_times[1] * 1e3:.1f} ms ({ism_times[0] / ism_times[1]:.2f}x)"
        )
        if args.joint:
            original, swapped_step = _joint_steps(size, args.batch, mixed, channels_last)
            joint = [time_calls(step, args.repeats).best for step in (original, swapped_step)]
            print(f"{label}: joint step {joint[0]:.3f} -> {joint[1]:.3f} s ({joint[0] / joint[1]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
