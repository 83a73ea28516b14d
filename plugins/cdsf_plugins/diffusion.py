"""A conditional denoising diffusion synthesiser on MONAI's generative networks and schedulers.

Notation: x is the MRI, y the real PET, t a timestep of the forward (noising) process with
T = ``train_timesteps`` steps and cumulative signal share a_t (MONAI's ``alphas_cumprod``),
eps ~ N(0, I), and y_t = sqrt(a_t) y + sqrt(1 - a_t) eps the noised PET. The network
e(y_t, x, t) is MONAI's ``DiffusionModelUNet`` on the two channels (y_t, x): the MRI is the
condition, concatenated as an input channel (as conditional diffusion models of PET from MRI
do, PASTA and SiM2P among them).

- Training objective (DDPM, Ho et al. 2020): the noise-prediction MSE
  |e(y_t, x, t) - eps|^2, averaged over the voxels, with t uniform on {0, ..., T - 1}
  and eps from the run's random stream: :meth:`DiffusionSynthesiser.training_loss`, the
  optional part of the synthesiser contract that couplings use where present
  (docs/plugins.md).
- Inference (evaluation mode, the synthesiser contract): deterministic DDIM sampling
  (Song et al. 2021, eta = 0) in ``sampling_steps`` steps from y_T = eps_x, MONAI's
  ``DDIMScheduler``, clipped to [-1, 1]. eps_x is drawn per subject from a generator seeded by
  a hash of the subject's MRI and ``seed``: a subject's sample depends on its MRI alone,
  never on the other subjects of its batch, and two samplings are equal.
- Training-mode forward (what a coupling differentiates, the joint coupling's y_hat): the
  iterative sampler cannot pass a gradient usefully, so ``forward`` in training mode returns
  a one-step estimate of the clean PET, the x0 prediction from a noised zero (mid-grey)
  start at timestep t* = ``estimate_timestep`` (-1: T - 1, the sampler's first step):
  y_t* = sqrt(1 - a_t*) eps_x, x0 = (y_t* - sqrt(1 - a_t*) e(y_t*, x, t*)) / sqrt(a_t*),
  clipped to [-1, 1] in value with the gradient of the unclipped estimate (straight through),
  so a clipped voxel still learns. docs/methods.md says what this means for --joint.

MONAI (with einops, which its attention blocks import) is an optional dependency of this
plugin alone (the ``diffusion`` extra); it is
imported when the synthesiser is built, and a run that selects it without MONAI exits 2
naming the extra.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdsf_bench.errors import InputError

#: the optional dependency group of pyproject.toml that installs MONAI
EXTRA = "diffusion"


def _monai() -> tuple[Any, Any]:
    """MONAI's ``DiffusionModelUNet`` and ``DDIMScheduler``, or a clear error naming the extra."""
    try:
        import einops  # noqa: F401  (MONAI's attention blocks need it; fail here, not mid-run)
        from monai.networks.nets import DiffusionModelUNet
        from monai.networks.schedulers import DDIMScheduler
    except ImportError as error:
        raise InputError(
            "The diffusion synthesiser (--synth diffusion) needs MONAI >= 1.5 and einops, which are not "
            f"installed: pip install 'cdsf-bench[{EXTRA}]'. ({error})"
        ) from None
    return DiffusionModelUNet, DDIMScheduler


def subject_noise(mri: Tensor, seed: int) -> Tensor:
    """[B, 1, D, H, W] standard normal noise, each subject's drawn from a hash of its own MRI.

    Drawn on the CPU from a generator per subject, so it is the same on every device and
    for every batch the subject is part of.
    """
    volumes = []
    for volume in mri.detach().float().cpu():
        digest = hashlib.sha256(f"cdsf-diffusion:{seed}:".encode() + volume.contiguous().numpy().tobytes())
        generator = torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little") >> 1)
        volumes.append(torch.randn(volume.shape, generator=generator))
    if not volumes:
        return mri.new_zeros(mri.shape)
    return torch.stack(volumes).to(mri.device)


class DiffusionSynthesiser(nn.Module):
    """MRI-conditioned DDPM/DDIM: MONAI's diffusion U-Net on (noised PET, MRI), a noise predictor.

    Settings: the U-Net's ``channels`` per level (each a multiple of ``norm_groups``, its
    group-norm groups), ``res_blocks`` per level and ``attention`` (self-attention in the
    deepest level's blocks too: costly in 3D, off by default; MONAI's middle block at the
    bottleneck always has one); the noise schedule (``schedule``, a MONAI
    schedule name, over ``train_timesteps``); ``sampling_steps`` DDIM steps; the one-step
    estimate's ``estimate_timestep``; the sampling noise's ``seed``. Volumes of any size are
    padded (replicating the border) to a multiple of the U-Net's down-sampling and cropped back.
    """

    scheduler: Any  # monai.networks.schedulers.DDIMScheduler

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64),
        res_blocks: int = 1,
        norm_groups: int = 8,
        attention: bool = False,
        schedule: str = "linear_beta",
        train_timesteps: int = 1000,
        sampling_steps: int = 20,
        estimate_timestep: int = -1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not channels or any(c <= 0 or c % norm_groups for c in channels):
            raise InputError(
                f"synth.diffusion.channels must be positive multiples of synth.diffusion.norm_groups "
                f"({norm_groups}), got {list(channels)}."
            )
        if train_timesteps < 2:
            raise InputError(f"synth.diffusion.train_timesteps must be at least 2, got {train_timesteps}.")
        if not 1 <= sampling_steps <= train_timesteps:
            raise InputError(
                f"synth.diffusion.sampling_steps must be from 1 to train_timesteps ({train_timesteps}), "
                f"got {sampling_steps}."
            )
        if not -train_timesteps <= estimate_timestep < train_timesteps:
            raise InputError(
                f"synth.diffusion.estimate_timestep must index a training timestep (-{train_timesteps} to "
                f"{train_timesteps - 1}; -1 is the last), got {estimate_timestep}."
            )
        unet_class, scheduler_class = _monai()
        levels = len(channels)
        self.unet = unet_class(
            spatial_dims=3,
            in_channels=2,
            out_channels=1,
            num_res_blocks=res_blocks,
            channels=tuple(channels),
            attention_levels=tuple([False] * (levels - 1) + [attention]),
            norm_num_groups=norm_groups,
            num_head_channels=channels[-1],
        )
        try:
            scheduler = scheduler_class(
                num_train_timesteps=train_timesteps, schedule=schedule, clip_sample=True
            )
        except (KeyError, ValueError):  # MONAI's component store: "Component '...' not found"
            raise InputError(
                f"synth.diffusion.schedule {schedule!r} is not a MONAI noise schedule "
                "(linear_beta, scaled_linear_beta, sigmoid_beta or cosine)."
            ) from None
        # MONAI's scheduler is a module without parameters or buffers: it adds nothing to the state
        self.scheduler = scheduler
        self.train_timesteps = train_timesteps
        self.sampling_steps = sampling_steps
        self.estimate_timestep = estimate_timestep % train_timesteps
        self.seed = seed
        self.multiple = 2 ** (levels - 1)

    @property
    def signal_share(self) -> Tensor:
        """[T] a_t, the cumulative product of the schedule's alphas (float32, on the CPU)."""
        return self.scheduler.alphas_cumprod.float().cpu()

    def predict_noise(self, noised: Tensor, mri: Tensor, timesteps: Tensor) -> Tensor:
        """e(y_t, x, t) for [B, 1, D, H, W] ``noised`` and ``mri`` and [B] ``timesteps``."""
        inputs = torch.cat([noised.to(mri.dtype), mri], dim=1)
        size = inputs.shape[2:]
        pad: list[int] = []
        for side in reversed(size):
            pad += [0, -side % self.multiple]
        if any(pad):
            inputs = F.pad(inputs, pad, mode="replicate")
        output = self.unet(inputs, timesteps.to(mri.device))
        return output[:, :, : size[0], : size[1], : size[2]]

    def training_loss(self, mri: Tensor, pet: Tensor) -> Tensor:
        """[B] the noise-prediction MSE of each subject at a uniform timestep (float32)."""
        batch = len(mri)
        timesteps = torch.randint(0, self.train_timesteps, (batch,), device=mri.device)
        noise = torch.randn(pet.shape, device=pet.device, dtype=torch.float32)
        share = self.signal_share.to(mri.device)[timesteps].view(-1, 1, 1, 1, 1)
        noised = share.sqrt() * pet.float() + (1 - share).sqrt() * noise
        predicted = self.predict_noise(noised, mri, timesteps).float()
        return (predicted - noise).pow(2).flatten(1).mean(dim=1)

    def estimate(self, mri: Tensor) -> Tensor:
        """The one-step clean-PET estimate from a noised zero start at ``estimate_timestep``."""
        step = self.estimate_timestep
        share = float(self.signal_share[step])
        noised = (1 - share) ** 0.5 * subject_noise(mri, self.seed)
        timesteps = torch.full((len(mri),), step, dtype=torch.long, device=mri.device)
        predicted = self.predict_noise(noised, mri, timesteps).float()
        raw = (noised - (1 - share) ** 0.5 * predicted) / share**0.5
        return raw + (raw.clamp(-1.0, 1.0) - raw).detach()

    def sample(self, mri: Tensor) -> Tensor:
        """Deterministic DDIM sampling (eta = 0) in ``sampling_steps`` steps, in [-1, 1]."""
        scheduler = self.scheduler
        scheduler.set_timesteps(self.sampling_steps)
        sample = subject_noise(mri, self.seed)
        for step in scheduler.timesteps.tolist():
            timesteps = torch.full((len(mri),), step, dtype=torch.long, device=mri.device)
            predicted = self.predict_noise(sample, mri, timesteps).float()
            sample, _ = scheduler.step(predicted, step, sample)
        return sample.clamp(-1.0, 1.0)

    def forward(self, mri: Tensor) -> Tensor:
        """PET for ``mri``: the one-step estimate in training mode, DDIM sampling in evaluation mode."""
        if not len(mri):
            return mri.new_zeros(mri.shape)
        return self.estimate(mri) if self.training else self.sample(mri)
