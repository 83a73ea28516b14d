"""Attribution maps of one diagnoser call, by Captum: integrated gradients, Grad-CAM, occlusion.

Every method attributes ``diagnoser(inputs).logits[0, target]``, in float32 and without
autocast, with ``inputs`` the captured input (:mod:`cdsf_bench.interpret.capture`) and
``target`` the output unit the diagnoser scores highest on it: the predicted class (for a
diagnoser whose outputs index class and source, the predicted (class, source) unit). The
predicted unit, not the true class, because a map explains what the diagnoser did; a
misclassified subject's map shows what misled it.

- ``ig``: integrated gradients from a baseline of zeros in the model's input space. The
  intensities are in [-1, 1] (docs/data.md), so zero is the middle of every channel's range:
  no tissue and no background, and the same input whatever the coupling put in a channel.
  The training mean would be the other natural baseline, but a run keeps only its PET mean,
  not its MRI mean; zeros treat both channels alike. :data:`IG_STEPS` steps by default.
- ``gradcam``: Grad-CAM on the diagnoser's last ``nn.Conv3d`` (the last one its
  ``named_modules`` lists), ReLU-ed and upsampled trilinearly onto the input grid. One map
  for all input channels (the layer mixes them), named :data:`COMBINED`. A diagnoser without
  a 3D convolution (a regional reader) is refused.
- ``occlusion``: the drop of the target logit when a cube of :data:`OCCLUSION_WINDOW_MM` of
  one channel is set to zero, moved by :data:`OCCLUSION_STRIDE_MM`; per channel. On a 4 mm
  grid (40 x 48 x 40) that is a 5-voxel cube every 3 voxels, about 2,200 forward passes per
  channel and subject.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cdsf_bench.errors import InputError

#: the methods, in the order they are computed and reported
METHODS = ("ig", "gradcam", "occlusion")
#: integrated gradients' default number of steps (Gauss-Legendre)
IG_STEPS = 32
#: the side of the occluding cube and its step, in mm (rounded to whole voxels, at least 1)
OCCLUSION_WINDOW_MM = 20.0
OCCLUSION_STRIDE_MM = 12.0
#: perturbed inputs per forward pass of occlusion
OCCLUSION_BATCH = 16
#: the name of a map that covers every input channel at once (Grad-CAM's)
COMBINED = "combined"


@dataclass(frozen=True)
class AttributionSettings:
    """How the maps are computed: the methods, the grid's voxel size, integrated gradients' steps."""

    methods: tuple[str, ...]
    voxel_mm: float
    ig_steps: int = IG_STEPS

    def occlusion_voxels(self) -> tuple[int, int]:
        """The occluding cube's side and its stride, in voxels."""
        return (
            max(1, round(OCCLUSION_WINDOW_MM / self.voxel_mm)),
            max(1, round(OCCLUSION_STRIDE_MM / self.voxel_mm)),
        )

    def record(self) -> dict:
        """What the maps mean, for interpretation.json."""
        window, stride = self.occlusion_voxels()
        return {
            "methods": list(self.methods),
            "target": "the output unit the diagnoser scores highest on the subject (its predicted class)",
            "ig": {"steps": self.ig_steps, "baseline": "zeros in the model's [-1, 1] input space"},
            "gradcam": {"layer": "the diagnoser's last nn.Conv3d", "relu": True, "upsampling": "trilinear"},
            "occlusion": {
                "window_voxels": window,
                "stride_voxels": stride,
                "window_mm": window * self.voxel_mm,
                "stride_mm": stride * self.voxel_mm,
                "baseline": 0.0,
            },
        }


def parse_methods(text: str) -> tuple[str, ...]:
    """``--method ig,gradcam``: known names, each once, in :data:`METHODS` order."""
    given = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = sorted(set(given) - set(METHODS))
    if unknown or not given:
        raise InputError(f"--method {text!r}: choose among {', '.join(METHODS)} (comma-separated).")
    return tuple(name for name in METHODS if name in given)


def require_captum() -> None:
    """Refuse, naming the extra to install, when Captum is missing."""
    if importlib.util.find_spec("captum") is None:
        raise InputError(
            "cdsf-bench interpret computes its maps with Captum, which is not installed; install "
            "the extra: pip install 'cdsf-bench[interpret]'."
        )


def last_conv(diagnoser: nn.Module) -> nn.Conv3d | None:
    """The diagnoser's last ``nn.Conv3d`` in ``named_modules`` order, or None."""
    convs = [m for m in diagnoser.modules() if isinstance(m, nn.Conv3d)]
    return convs[-1] if convs else None


def check_method(method: str, diagnoser: nn.Module, name: str) -> None:
    """Refuse a method the diagnoser ``name`` cannot be attributed by, with the reason."""
    if method == "gradcam" and last_conv(diagnoser) is None:
        raise InputError(
            f"--method gradcam needs a 3D convolution in the diagnoser, and '{name}' "
            f"({type(diagnoser).__name__}) has no nn.Conv3d; choose ig or occlusion for it."
        )


def logits_of(diagnoser: nn.Module) -> Callable[[Tensor], Tensor]:
    """The diagnoser as Captum's forward function: its logits, in float32."""

    def forward(inputs: Tensor) -> Tensor:
        return diagnoser(inputs).logits.float()

    return forward


def predicted_unit(diagnoser: nn.Module, inputs: Tensor) -> int:
    """The output unit the diagnoser scores highest on ``inputs`` (one subject)."""
    with torch.no_grad():
        return int(logits_of(diagnoser)(inputs)[0].argmax())


def attribute(
    method: str, diagnoser: nn.Module, name: str, inputs: Tensor, settings: AttributionSettings
) -> np.ndarray:
    """The map of ``method`` for one captured input, [C, D, H, W] (Grad-CAM: [1, D, H, W]).

    Captum refusing the diagnoser (no gradient reaches the input, an output it cannot
    index) is the user's to know, not a traceback: an InputError naming method and diagnoser.
    """
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion

    check_method(method, diagnoser, name)
    forward = logits_of(diagnoser)
    target = predicted_unit(diagnoser, inputs)
    try:
        with torch.enable_grad():
            if method == "ig":
                found = IntegratedGradients(forward).attribute(
                    inputs,
                    baselines=torch.zeros_like(inputs),
                    target=target,
                    n_steps=settings.ig_steps,
                    internal_batch_size=settings.ig_steps,
                )
            elif method == "gradcam":
                layer = LayerGradCam(forward, last_conv(diagnoser))
                coarse = layer.attribute(inputs, target=target, relu_attributions=True)
                found = LayerAttribution.interpolate(
                    coarse, tuple(inputs.shape[2:]), interpolate_mode="trilinear"
                )
            else:
                window, stride = settings.occlusion_voxels()
                found = Occlusion(forward).attribute(
                    inputs,
                    sliding_window_shapes=(1, window, window, window),
                    strides=(1, stride, stride, stride),
                    baselines=0.0,
                    target=target,
                    perturbations_per_eval=OCCLUSION_BATCH,
                )
    except (RuntimeError, AssertionError, TypeError) as error:
        raise InputError(
            f"Captum cannot attribute diagnoser '{name}' ({type(diagnoser).__name__}) by {method}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None
    return found.detach().float().cpu().numpy()[0]
