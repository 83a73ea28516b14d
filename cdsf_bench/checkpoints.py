"""Whether a checkpoint holds the networks a configuration builds, and loading them if it does.

``run --resume`` and ``predict`` both read a run folder's ``checkpoints/last.pt`` into the
networks its ``config.toml`` builds. A checkpoint copied from another run (another method),
written by another version, or damaged must be refused naming what it holds against what the
config builds, before a module is touched: one check for both commands. The rule: the layout
``format`` must be this version's; the stages must match, by name (where recorded) and by
the names of their modules; only then are weights loaded, and a module whose weights do not
fit (another network size, another plugin version) is named with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import TrainingStage

#: The checkpoint layout; bumped when a reader of older checkpoints would misread them
#: (2: ``format`` and ``train_pet_mean`` recorded, so a finished run can be applied to new data).
CHECKPOINT_FORMAT = 2
#: what every checkpoint of this format holds besides its format, PET mean and stages
LAYOUT = ("stage_index", "next_epoch", "best", "history", "selections", "torch_rng")


def check_format(state: Any, path: Path) -> None:
    """A checkpoint in this version's layout (format, PET mean, stages), or an InputError."""
    found = state.get("format") if isinstance(state, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise InputError(
            f"Checkpoint {path} was written by another version of cdsf-bench (checkpoint format "
            f"{found if found is not None else 'unrecorded'}; this version reads format "
            f"{CHECKPOINT_FORMAT}). Use the version that trained it, or train the run again."
        )
    mean = state.get("train_pet_mean")
    stages = state.get("stages")
    if not isinstance(mean, torch.Tensor) or mean.dim() != 5 or not isinstance(stages, list):
        raise InputError(
            f"Checkpoint {path} lacks the training PET mean or the stages' modules; it is damaged."
        )
    if not all(isinstance(stage, dict) and isinstance(stage.get("modules"), dict) for stage in stages):
        raise InputError(f"Checkpoint {path} holds a stage without its modules; it is damaged.")
    lacking = [key for key in LAYOUT if key not in state]
    if lacking:
        raise InputError(f"Checkpoint {path} lacks {', '.join(lacking)}; it is damaged.")


def check_finite(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose selected weights are not all finite: nothing it predicts would be."""
    for index, saved in enumerate(state["stages"]):
        for name, module in saved["modules"].items():
            for key, value in module.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                    and not value.isfinite().all()
                ):
                    raise InputError(
                        f"Checkpoint {path} holds weights that are not finite (stage {index}, module "
                        f"'{name}', {key}); the run that wrote it diverged or the file was damaged. "
                        "Train the run again."
                    )


def describe(stages: Sequence[tuple[str | None, list[str]]]) -> str:
    """Stages as a person reads them: "stage 'synthesis' (modules synth), stage 'diagnosis' (...)"."""
    parts = [
        f"stage {'' if name is None else repr(name) + ' '}(modules {', '.join(modules) or 'none'})"
        for name, modules in stages
    ]
    return f"{len(parts)} stage(s): " + "; ".join(parts)


def load_modules(stages: Sequence[TrainingStage], state: dict[str, Any], path: Path) -> None:
    """Load every stage's modules from the checkpoint ``state`` (read from ``path``, see ``check_format``).

    Refused (InputError) when the checkpoint's stages and modules are not those the config
    builds, naming both: it is another method's checkpoint.
    """
    built = [(stage.name, sorted(stage.modules)) for stage in stages]
    held = [(saved.get("name"), sorted(saved["modules"])) for saved in state["stages"]]
    same_names = all(h is None or h == b for (h, _), (b, _) in zip(held, built, strict=False))
    if len(held) != len(built) or not same_names or [m for _, m in held] != [m for _, m in built]:
        raise InputError(
            f"Checkpoint {path} holds {describe(held)}, but the method its config.toml names trains "
            f"{describe(built)}: it is another method's checkpoint. Use it with the run folder it "
            "was written in, or train this run again."
        )
    for stage, saved in zip(stages, state["stages"], strict=True):
        for name, module in stage.modules.items():
            try:
                module.load_state_dict(saved["modules"][name])
            except (KeyError, RuntimeError, TypeError) as error:
                reason = str(error).strip().splitlines()[0][:300]
                raise InputError(
                    f"Checkpoint {path} holds the stages and modules of the method its config.toml "
                    f"names, but its weights do not fit stage '{stage.name}', module '{name}' "
                    f"({reason}): the network settings or the plugin's version differ from those it "
                    "was trained with. Use the plugin version and config.toml that trained it."
                ) from None
