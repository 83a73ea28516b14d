"""The built-in methods' registration: their components, search spaces, flags and the default method.

One plugin (entry point ``methods``) for every built-in method, implementing the hooks exactly
as a third-party plugin does (docs/plugins.md). The methods themselves live in their own
modules (cdsf.py, baselines.py, task_induced.py and the networks), which register nothing.
"""

from __future__ import annotations

from cdsf_bench import Choice, Component, Flag, FloatRange, IntRange, hookimpl
from cdsf_bench.interfaces import Method, MethodDefaults, SearchParam
from cdsf_plugins.baselines import CompleteCase, DecoupledCoupling, MeanImpute, Oracle, SingleModality
from cdsf_plugins.cdsf import JointCoupling
from cdsf_plugins.common import SYNTHETIC_PAIRS
from cdsf_plugins.diffusion import DiffusionSynthesiser
from cdsf_plugins.ism import ISM
from cdsf_plugins.mdm import MDM
from cdsf_plugins.oracle_synthesis import OracleSynthesis
from cdsf_plugins.regional import Regional
from cdsf_plugins.routing import RoutingCoupling
from cdsf_plugins.task_induced import TaskInducedCoupling
from cdsf_plugins.unet3d import UNet3D

#: the search space of the diagnoser's L2 weight decay (``cdsf-bench tune``), the same in every
#: coupling, so that no method's diagnoser is searched more widely than another's; two decades
#: either side of the default 1e-4
WEIGHT_DECAY_SPACE = FloatRange(1e-6, 1e-2, log=True)


# Search spaces for ``cdsf-bench tune`` (docs/benchmark.md, "Tuning"). Each range brackets
# the default (which trial 0 of every study tries); loss weights and rates are searched on a
# log scale, a decade or two either side. Settings that change what the method is are held
# fixed: the reading of the MDM head, which PET predicts, the diagnostic term on G (a label
# path, docs/methods.md) and the adversarial term (off; its critic's settings with it).

#: ISM: the depth of its transfer, the two readings of the decoder, the normalisation
ISM_SPACE: dict[str, SearchParam] = {
    "n_residual": IntRange(3, 9),
    "decoder_widths": Choice(((32, 16), (16, 8))),
    "norm": Choice(("instance", "batch", "group")),
}
#: MDM: the scale of its normalised features (the logits' temperature) and its normalisation
#: (instance norm is left out: it erases the global PET level that carries AD, mdm.py)
MDM_SPACE: dict[str, SearchParam] = {
    "feature_scale": FloatRange(4.0, 64.0, log=True),
    "norm": Choice(("batch", "group")),
}
#: the regional diagnoser: its masks and logistic regression against a small MLP (its
#: regularisation, the weight decay, is the coupling's)
REGIONAL_SPACE: dict[str, SearchParam] = {
    "masks": Choice(("soft", "hard")),
    "hidden": Choice((0, 16)),
}
#: the joint coupling: the loss weights against w_cls_real = 1 (the scale the learning rate
#: sets), G's share of the learning rate, D's weight decay and which subjects give synthetic pairs
JOINT_SPACE: dict[str, SearchParam] = {
    "w_voxel": FloatRange(1.0, 100.0, log=True),
    "w_feature": FloatRange(0.1, 10.0, log=True),
    "w_cls_synth": FloatRange(0.1, 10.0, log=True),
    "synthesiser_lr_factor": FloatRange(0.05, 1.0, log=True),
    "weight_decay": WEIGHT_DECAY_SPACE,
    "synthetic_pairs": Choice(SYNTHETIC_PAIRS),
}


# Search spaces for ``cdsf-bench tune``, bracketing the defaults as the CDSF ones above do. The
# diagnosis-only couplings have one setting of their own, the diagnoser's weight decay,
# searched exactly as the joint coupling's; the decoupled GAN's pix2pix settings are searched
# around pix2pix's values. ``w_adv`` is held fixed: 0 makes the L1-only control, another method.

#: the 3D U-Net: depth and widths, and the normalisation
UNET_SPACE: dict[str, SearchParam] = {
    "widths": Choice(((8, 16, 32), (8, 16, 32, 64), (16, 32, 64, 128))),
    "norm": Choice(("instance", "batch", "group")),
}
#: the decoupled coupling: pix2pix's L1 weight and learning rate, its PatchGAN, D's weight decay
DECOUPLED_SPACE: dict[str, SearchParam] = {
    "w_l1": FloatRange(10.0, 300.0, log=True),
    "synthesis_lr": FloatRange(5e-5, 1e-3, log=True),
    "discriminator_widths": Choice(((8, 16, 32), (16, 32, 64), (32, 64, 128))),
    "discriminator_norm": Choice(("instance", "batch")),
    "weight_decay": WEIGHT_DECAY_SPACE,
}
#: the diagnosis-only couplings (single, mean-impute, complete-case, oracle, oracle-synthesis)
DIAGNOSIS_SPACE: dict[str, SearchParam] = {"weight_decay": WEIGHT_DECAY_SPACE}


#: the diffusion synthesiser: the U-Net's width and the number of DDIM steps
DIFFUSION_SPACE: dict[str, SearchParam] = {
    "channels": Choice(((8, 16, 32), (16, 32, 64), (32, 64, 64))),
    "sampling_steps": IntRange(10, 50),
}

#: the decoupled baseline's space, plus the task term's weight and A's learning rate
TASK_INDUCED_SPACE: dict[str, SearchParam] = {
    **DECOUPLED_SPACE,
    "w_task": FloatRange(0.1, 10.0, log=True),
    "task_lr": FloatRange(5e-5, 1e-3, log=True),
}


@hookimpl
def cdsf_bench_synthesisers() -> list[Component]:
    return [
        Component(
            "ism", ISM, "CDSF image synthesis module: 3D ResNet generator, MRI to PET", space=ISM_SPACE
        ),
        Component(
            "unet3d",
            UNet3D,
            "pix2pix-style 3D U-Net generator with skip connections, MRI to PET",
            space=UNET_SPACE,
        ),
        Component(
            "diffusion",
            DiffusionSynthesiser,
            "conditional denoising diffusion (MONAI U-Net, DDIM sampling), MRI as condition; "
            "needs the 'diffusion' extra (MONAI)",
            space=DIFFUSION_SPACE,
        ),
    ]


@hookimpl
def cdsf_bench_diagnosers() -> list[Component]:
    return [
        Component(
            "mdm",
            MDM,
            "CDSF multi-modal diagnosis module: 3D CNN with L2-normalised spatial features",
            space=MDM_SPACE,
        ),
        Component(
            "regional",
            Regional,
            "regional means of MRI and PET in the MNI atlas's regions, then logistic regression "
            "or a small MLP: a diagnoser that learns from few labels",
            space=REGIONAL_SPACE,
        ),
    ]


@hookimpl
def cdsf_bench_couplings() -> list[Component]:
    return [
        Component(
            "joint",
            JointCoupling,
            "CDSF collaborative training of synthesiser and diagnoser",
            space=JOINT_SPACE,
            flag=Flag("joint", "Train synthesis and diagnosis together (CDSF)."),
        ),
        Component(
            "decoupled",
            DecoupledCoupling,
            "two-stage: a pix2pix 3D cGAN imputes missing PET, then the diagnoser",
            space=DECOUPLED_SPACE,
            flag=Flag("decoupled", "Train a GAN first, then the diagnoser."),
        ),
        Component(
            "task-induced",
            TaskInducedCoupling,
            "two-stage, TPA-GAN's idea: the generator's adversary also diagnoses (real class k vs "
            "synthetic), then the diagnoser",
            space=TASK_INDUCED_SPACE,
        ),
        Component(
            "single", SingleModality, "the diagnoser on MRI alone (--synth none)", space=DIAGNOSIS_SPACE
        ),
        Component(
            "mean-impute", MeanImpute, "missing PET replaced by the mean training PET", space=DIAGNOSIS_SPACE
        ),
        Component(
            "routing",
            RoutingCoupling,
            "the multi-modal diagnoser where PET was acquired, an MRI-only one elsewhere (--synth none)",
            space=DIAGNOSIS_SPACE,
            flag=Flag("routing", "Real PET where acquired, MRI alone elsewhere: no imputed PET."),
        ),
        Component(
            "complete-case",
            CompleteCase,
            "reference: train and test on subjects with real PET only",
            space=DIAGNOSIS_SPACE,
        ),
        Component(
            "oracle",
            Oracle,
            "reference: every subject's real PET, withheld PET included (phantom only)",
            space=DIAGNOSIS_SPACE,
        ),
        Component(
            "oracle-synthesis",
            OracleSynthesis,
            "reference: missing PET replaced by E[PET | MRI], a perfect generator's output (phantom only)",
            space=DIAGNOSIS_SPACE,
        ),
    ]


@hookimpl
def cdsf_bench_defaults() -> MethodDefaults:
    """CDSF is what the benchmark is about: the default run and every report's reference."""
    return MethodDefaults(
        method=Method(synth="ism", diag="mdm", coupling="joint"), mri_only_coupling="single"
    )
