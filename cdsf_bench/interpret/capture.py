"""What a coupling's diagnoser saw: its input captured while the coupling predicts one subject.

The core names no method, so it cannot know how a coupling assembles its diagnoser's input
(MRI alone; MRI and real, synthetic or mean PET; an acquisition indicator). It need not:
every module the diagnoser factory built is on record (``Assembly.diagnosers``), and a
forward pre-hook on each of them keeps the input it is called with while
``Coupling.predict`` runs on a one-subject batch. Whatever the coupling does, what was
attributed is then exactly what its diagnoser read. A coupling that calls several
diagnosers (routing: the MRI-only one for every subject, the multimodal one where PET was
acquired) yields a call of each; one that calls a diagnoser several times (CDSF's
cross-fitted generators, each feeding its own synthetic PET) yields each call.

Each channel of a captured input is named by what it equals (:func:`channel_names`), so that
a map is scored against the truth of its modality whatever order a coupling stacks them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Batch, Coupling, PetSource, Prediction

#: a channel equal to the subject's MRI
MRI = "mri"
#: a channel equal to the PET the coupling used: acquired, synthetic or the training mean
PET = "pet"
#: a channel of one value everywhere (an acquisition indicator)
CONSTANT = "constant"


@dataclass(frozen=True)
class DiagnoserCall:
    """One call of a diagnoser during a prediction: which one, and the input it read."""

    name: str  # the diagnoser's name among the coupling's modules
    module: nn.Module
    inputs: Tensor  # [1, C, D, H, W] float32, detached
    channels: tuple[str, ...]  # what each channel is (MRI, PET, CONSTANT or channel_<k>)


@dataclass(frozen=True)
class CapturedPrediction:
    """A one-subject prediction and every diagnoser call it made."""

    prediction: Prediction
    calls: tuple[DiagnoserCall, ...]

    @property
    def pet_source(self) -> PetSource:
        return self.prediction.pet_source[0]


def diagnoser_names(coupling: Coupling, diagnosers: tuple[nn.Module, ...]) -> dict[int, str]:
    """Each diagnoser's name (by ``id``) as the coupling's modules name it, nested or not.

    A diagnoser the coupling keeps inside another module is named by its dotted path there
    (``multimodal.diagnoser``); one it keeps nowhere gets ``diagnoser<k>``, k its build order.
    """
    named: dict[int, str] = {}
    for top, module in coupling.modules().items():
        for path, inner in module.named_modules():
            named.setdefault(id(inner), f"{top}.{path}" if path else top)
    return {id(d): named.get(id(d), f"diagnoser{k}") for k, d in enumerate(diagnosers)}


def capture(coupling: Coupling, diagnosers: tuple[nn.Module, ...], batch: Batch) -> CapturedPrediction:
    """Predict the one-subject ``batch`` as the engine does, keeping every diagnoser call's input.

    Refused (an InputError naming the coupling's modules) when no recorded diagnoser was
    called: then nothing of what predicted can be attributed.
    """
    if len(batch) != 1:
        raise ValueError(f"capture predicts one subject at a time, got a batch of {len(batch)}")
    names = diagnoser_names(coupling, diagnosers)
    seen: list[tuple[nn.Module, Tensor]] = []

    def keep(module: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], Tensor):
            raise InputError(
                f"Diagnoser '{names[id(module)]}' was called without a tensor as its first argument; "
                "only a diagnoser called as diagnoser(inputs) can be attributed."
            )
        seen.append((module, args[0].detach().float().contiguous().clone()))

    handles = [d.register_forward_pre_hook(keep) for d in diagnosers]
    modules = coupling.modules()
    was_training = {name: m.training for name, m in modules.items()}
    try:
        for module in modules.values():
            module.eval()
        with torch.no_grad():
            prediction = coupling.predict(batch)
    finally:
        for handle in handles:
            handle.remove()
        for name, module in modules.items():
            module.train(was_training[name])
    if not seen:
        raise InputError(
            "The coupling predicted without calling any module its diagnoser factory built (modules: "
            f"{', '.join(modules) or 'none'}), so there is no diagnoser input to attribute."
        )
    calls = tuple(
        DiagnoserCall(names[id(module)], module, inputs, channel_names(inputs, batch, prediction, coupling))
        for module, inputs in seen
    )
    return CapturedPrediction(prediction, calls)


def channel_names(
    inputs: Tensor, batch: Batch, prediction: Prediction, coupling: Coupling
) -> tuple[str, ...]:
    """What each channel of a captured input is, by what it equals.

    :data:`MRI`: the subject's MRI. :data:`CONSTANT`: one value everywhere (an indicator;
    asked before PET, since an all-zero indicator could equal a blank PET). :data:`PET`: the
    subject's acquired PET, the prediction's synthetic PET or the training PET mean; failing
    those, the one channel left that is neither MRI nor constant when the prediction reports
    a PET source (a coupling that averages several syntheses feeds each call its own).
    Anything else is ``channel_<k>``, attributed but not scored.
    """
    pets = [coupling.context.train_pet_mean]
    if bool(batch.has_pet[0]):
        pets.append(batch.pet)
    if prediction.synthetic is not None:
        pets.append(prediction.synthetic)
    names = []
    for k in range(inputs.shape[1]):
        channel = inputs[:, k : k + 1]
        if _equal(channel, batch.mri):
            names.append(MRI)
        elif bool((channel == channel.flatten()[0]).all()):
            names.append(CONSTANT)
        elif any(_equal(channel, pet) for pet in pets):
            names.append(PET)
        else:
            names.append(f"channel_{k}")
    unknown = [k for k, name in enumerate(names) if name.startswith("channel_")]
    if PET not in names and len(unknown) == 1 and prediction.pet_source[0] != "none":
        names[unknown[0]] = PET
    # a name that repeats (two constant channels) keeps its channel's index, so files stay apart
    return tuple(name if names.count(name) == 1 else f"{name}_{k}" for k, name in enumerate(names))


def _equal(channel: Tensor, volume: Tensor) -> bool:
    return channel.shape == volume.shape and bool(torch.equal(channel, volume.float()))


def calls_by_diagnoser(calls: tuple[DiagnoserCall, ...]) -> Mapping[str, list[DiagnoserCall]]:
    """The calls grouped by diagnoser, in the order each was first called."""
    grouped: dict[str, list[DiagnoserCall]] = {}
    for call in calls:
        grouped.setdefault(call.name, []).append(call)
    return grouped
