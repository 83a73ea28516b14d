"""Shape, structure and gradient tests of the CDSF networks (ISM and MDM), on tiny volumes.

Several tests guard against the defects of a public reproduction listed in DESIGN.md:
normalising along a spatial axis, no ReLU in the MDM, a norm in front of tanh, softmax
inside the model and a hard-coded FC size.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cdsf_bench.interfaces import DiagnoserOutput
from cdsf_plugins.ism import ISM
from cdsf_plugins.layers import NORM_KINDS, conv_block, make_norm, up_block
from cdsf_plugins.mdm import MDM, CeilAvgPool3d
from cdsf_plugins.space_to_depth import SpaceToDepthConv3d, memory_format_of

NORM_TYPES = (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_ism(norm: str = "instance") -> ISM:
    return ISM(widths=(4, 8, 8), n_residual=2, norm=norm)


def small_mdm(shape: tuple[int, int, int], norm: str = "batch", in_channels: int = 2) -> MDM:
    return MDM(in_channels, shape, widths=(4, 8, 8, 8, 8), norm=norm)


# --- layers ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, layer_type", zip(NORM_KINDS, NORM_TYPES, strict=True))
def test_make_norm_kinds(kind: str, layer_type: type) -> None:
    layer = make_norm(kind, 12)
    assert isinstance(layer, layer_type)
    x = torch.randn(2, 12, 4, 4, 4)
    assert layer(x).shape == x.shape


def test_instance_norm_is_affine_and_group_count_divides() -> None:
    assert make_norm("instance", 8).affine
    assert make_norm("group", 64).num_groups == 8
    assert make_norm("group", 12).num_groups == 6
    assert make_norm("group", 3).num_groups == 3
    assert make_norm("group", 1).num_groups == 1


def test_unknown_norm_names_allowed_values() -> None:
    with pytest.raises(ValueError, match="batch, instance, group"):
        make_norm("layer", 8)
    with pytest.raises(ValueError, match="batch, instance, group"):
        MDM(2, (16, 16, 16), norm="weight")
    with pytest.raises(ValueError, match="batch, instance, group"):
        ISM(norm="spectral")


def test_blocks_change_size_as_documented() -> None:
    x = torch.randn(2, 3, 9, 10, 8)
    assert conv_block(3, 5, 3, stride=2)(x).shape == (2, 5, 5, 5, 4)
    assert up_block(3, 5)(x).shape == (2, 5, 18, 20, 16)


# --- ISM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 16, 16), (16, 20, 24), (18, 22, 20), (17, 21, 19)])
def test_ism_output_shape_equals_input(shape: tuple[int, int, int]) -> None:
    mri = torch.randn(2, 1, *shape)
    assert small_ism()(mri).shape == mri.shape


def test_ism_default_architecture() -> None:
    ism = ISM()
    convs = [m for m in ism.encoder.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert [c.kernel_size[0] for c in convs] == [7, 3, 3]
    assert [c.stride[0] for c in convs] == [1, 2, 2]
    assert len(ism.transfer) == 6
    ups = [m for m in ism.decoder.modules() if isinstance(m, nn.ConvTranspose3d)]
    # the paper's "two transposed conv layers with 32 and 16 channels": output widths
    assert [(u.in_channels, u.out_channels) for u in ups] == [(32, 32), (32, 16)]
    last = [m for m in ism.decoder.modules() if isinstance(m, nn.Conv3d)][-1]
    assert (last.in_channels, last.out_channels) == (16, 1)
    narrow = ISM(decoder_widths=(16, 8))  # the earlier reading, still selectable
    ups = [m for m in narrow.decoder.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [(32, 16), (16, 8)]


def test_ism_ends_with_conv_then_tanh_without_norm() -> None:
    layers = [m for m in ISM().modules() if not list(m.children())]
    assert isinstance(layers[-1], nn.Tanh)
    assert isinstance(layers[-2], nn.Conv3d) and layers[-2].out_channels == 1
    # every other conv is followed by a normalisation
    for i, layer in enumerate(layers[:-2]):
        if isinstance(layer, (nn.Conv3d, nn.ConvTranspose3d)):
            assert isinstance(layers[i + 1], NORM_TYPES), i


def test_ism_output_within_tanh_range() -> None:
    out = small_ism()(10 * torch.randn(2, 1, 16, 16, 16))
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("norm", NORM_KINDS)
def test_ism_norm_kinds(norm: str) -> None:
    mri = torch.randn(2, 1, 16, 16, 16)
    assert small_ism(norm)(mri).shape == mri.shape


# --- MDM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 16, 16), (17, 21, 19), (32, 24, 20), (1, 1, 1)])
def test_mdm_output_shapes(shape: tuple[int, int, int]) -> None:
    mdm = small_mdm(shape)
    out = mdm(torch.randn(2, 2, *shape))
    assert isinstance(out, DiagnoserOutput)
    assert out.logits.shape == (2, 2)
    assert out.features.shape == (2, mdm.classifier.in_features)


def test_mdm_fc_size_is_derived_from_input_shape() -> None:
    # 40 -> 20 -> 10 -> 5 -> 3 -> 2 and 48 -> 24 -> 12 -> 6 -> 3 -> 2: 64 channels x 2^3
    assert MDM(2, (40, 48, 40)).classifier.in_features == 64 * 2 * 2 * 2
    # 128 -> 64 -> 32 -> 16 -> 8 -> 4
    assert MDM(2, (128, 128, 128)).classifier.in_features == 64 * 4 * 4 * 4
    # 33 -> 17 -> 9 -> 5 -> 3 -> 2 and 16 -> 8 -> 4 -> 2 -> 1 -> 1
    assert MDM(1, (33, 16, 16)).classifier.in_features == 64 * 2 * 1 * 1


@pytest.mark.parametrize("side", range(1, 20))
def test_mdm_feature_shape_matches_real_forward(side: int) -> None:
    shape = (side, side + 1, side + 6)
    mdm = small_mdm(shape).eval()
    assert mdm.features(torch.randn(1, 2, *shape)).shape[1:] == mdm.feature_shape


@pytest.mark.parametrize("side", range(2, 9))
def test_ceil_avg_pool_equals_torch_ceil_mode(side: int) -> None:
    x = torch.randn(2, 3, side, side + 1, side + 2)
    expected = nn.AvgPool3d(2, stride=2, ceil_mode=True)(x)
    torch.testing.assert_close(CeilAvgPool3d()(x), expected)
    assert CeilAvgPool3d()(torch.randn(1, 1, 1, 1, 1)).shape == (1, 1, 1, 1, 1)


def test_mdm_features_are_l2_normalised_along_channels_then_overall() -> None:
    mdm = small_mdm((32, 32, 32))
    x = torch.randn(2, 2, 32, 32, 32)
    spatial = mdm.spatial_representation(x)
    channels, *space = mdm.feature_shape
    assert spatial.shape == (2, channels, math.prod(space))
    norms = spatial.norm(dim=1)
    # a position where ReLU zeroed every channel stays zero; all others are unit vectors
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0))
    assert (norms > 0).any()
    features = mdm(x).features
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2))
    expected = spatial.flatten(1) / spatial.flatten(1).norm(dim=1, keepdim=True)
    torch.testing.assert_close(features, expected)


def test_mdm_relu_follows_every_norm() -> None:
    layers = [m for m in MDM(2, (16, 16, 16)).modules() if not list(m.children())]
    norms = [i for i, m in enumerate(layers) if isinstance(m, NORM_TYPES)]
    assert len(norms) == 5
    for i in norms:
        assert isinstance(layers[i + 1], nn.ReLU)
    pools = [type(m) for m in layers if isinstance(m, (nn.MaxPool3d, CeilAvgPool3d))]
    assert pools == [nn.MaxPool3d] * 4 + [CeilAvgPool3d]


def test_mdm_returns_logits_not_probabilities() -> None:
    mdm = small_mdm((16, 16, 16))
    logits = mdm(torch.randn(2, 2, 16, 16, 16)).logits
    assert not torch.allclose(logits.sum(dim=1), torch.ones(2))
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)) for m in mdm.modules())


@pytest.mark.parametrize("norm", NORM_KINDS)
def test_mdm_norm_kinds(norm: str) -> None:
    mdm = small_mdm((32, 32, 32), norm=norm)
    out = mdm(torch.randn(2, 2, 32, 32, 32))
    out.logits.sum().backward()
    assert out.logits.shape == (2, 2)


def test_mdm_default_is_batch_norm() -> None:
    assert any(isinstance(m, nn.BatchNorm3d) for m in MDM(2, (16, 16, 16)).modules())


# --- together ----------------------------------------------------------------------------


def test_gradient_flows_from_mdm_features_to_ism_input() -> None:
    ism, mdm = small_ism(), small_mdm((16, 16, 16))
    mri = torch.randn(2, 1, 16, 16, 16, requires_grad=True)
    features = mdm(torch.cat([mri.detach(), ism(mri)], dim=1)).features
    features.pow(3).sum().backward()
    assert mri.grad is not None and mri.grad.abs().sum() > 0
    assert all(p.grad is not None for p in ism.parameters())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_autocast_and_channels_last(channels_last: bool, bf16: bool) -> None:
    ism, mdm = small_ism(), small_mdm((17, 20, 16))
    mri = torch.randn(2, 1, 17, 20, 16)
    if channels_last:
        ism = ism.to(memory_format=torch.channels_last_3d)
        mdm = mdm.to(memory_format=torch.channels_last_3d)
        mri = mri.to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pet = ism(mri)
        out = mdm(torch.cat([mri, pet], dim=1))
    assert pet.shape == mri.shape
    assert out.logits.shape == (2, 2)
    assert out.features.shape == (2, mdm.classifier.in_features)
    assert out.features.dtype == torch.float32


# --- space-to-depth output convolution -------------------------------------------------


@pytest.mark.parametrize(
    "in_channels, out_channels, kernel, padding_mode, sides",
    [(8, 1, 7, "replicate", (12, 16, 8)), (6, 1, 3, "replicate", (8, 8, 8)), (3, 2, 5, "zeros", (10, 6, 8))],
)
def test_space_to_depth_conv_equals_plain_conv_and_its_gradients(
    in_channels: int, out_channels: int, kernel: int, padding_mode: str, sides: tuple[int, int, int]
) -> None:
    plain = nn.Conv3d(
        in_channels, out_channels, kernel, padding=kernel // 2, padding_mode=padding_mode
    ).double()
    fast = SpaceToDepthConv3d(
        in_channels, out_channels, kernel, padding=kernel // 2, padding_mode=padding_mode, always=True
    ).double()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, in_channels, *sides, dtype=torch.float64)
    grad = torch.randn(2, out_channels, *sides, dtype=torch.float64)
    outputs = []
    for layer in (plain, fast):
        x_layer = x.clone().requires_grad_()
        y = layer(x_layer)
        (y * grad).sum().backward()
        outputs.append((y, x_layer.grad, layer.weight.grad, layer.bias.grad))
    for expected, got in zip(*outputs, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_space_to_depth_conv_reformulates_only_in_channels_last_on_cpu() -> None:
    layer = SpaceToDepthConv3d(8, 1, 7, padding=3)
    x = torch.randn(1, 8, 8, 8, 8)
    assert not layer._reformulate(x)  # contiguous weights: the plain convolution, as the reference
    layer = layer.to(memory_format=torch.channels_last_3d)
    assert layer._reformulate(x)
    assert memory_format_of(layer) == torch.channels_last_3d
    # the parameters, and so checkpoints, are those of nn.Conv3d
    assert list(layer.state_dict()) == list(nn.Conv3d(8, 1, 7).state_dict())


def test_space_to_depth_conv_falls_back_on_odd_sides() -> None:
    plain = nn.Conv3d(4, 1, 3, padding=1)
    fast = SpaceToDepthConv3d(4, 1, 3, padding=1, always=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 7, 6, 5)
    torch.testing.assert_close(fast(x), plain(x))
