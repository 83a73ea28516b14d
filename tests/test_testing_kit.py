"""The conformance kit (cdsf_bench.testing): every built-in component passes it, broken ones fail it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdsf_bench import Batch, Component, Coupling, DiagnoserOutput, FloatRange, Prediction, TrainingStage
from cdsf_bench.interfaces import DiagnoserFactory, PetSource, SynthesiserFactory, TrainingContext
from cdsf_bench.registry import default_registry
from cdsf_bench.testing import check_coupling, check_diagnoser, check_space, check_synthesiser

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
#: the diffusion synthesiser at its smallest: narrow, few timesteps, two sampling steps
SMALLEST = {"diffusion": {"channels": (8, 8, 8), "train_timesteps": 10, "sampling_steps": 2}}


def _names(kind: str) -> list[str]:
    return sorted(default_registry().components[kind])


@pytest.mark.parametrize("name", _names("synthesiser"))
def test_every_built_in_synthesiser_passes(name: str) -> None:
    if name == "diffusion":
        pytest.importorskip("monai", reason="the diffusion synthesiser needs the 'diffusion' extra")
    check_synthesiser(default_registry().get("synthesiser", name), **SMALLEST.get(name, {}))


@pytest.mark.parametrize("name", _names("diagnoser"))
def test_every_built_in_diagnoser_passes(name: str) -> None:
    check_diagnoser(default_registry().get("diagnoser", name))


@pytest.mark.parametrize("name", _names("coupling"))
def test_every_built_in_coupling_passes(name: str) -> None:
    check_coupling(default_registry().get("coupling", name))


# --- broken components fail, each naming what is wrong -------------------------------------


class Unbounded(nn.Module):
    """A synthesiser without a squashing output: PET outside [-1, 1]."""

    def __init__(self, gain: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)
        self.gain = gain

    def forward(self, mri: Tensor) -> Tensor:
        return self.gain * (self.conv(mri) + 2)


class Forgetful(nn.Module):
    """A synthesiser whose scale is a plain attribute, not a parameter or buffer: lost in a checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)
        self.scale = torch.rand(1)

    def forward(self, mri: Tensor) -> Tensor:
        return torch.tanh(self.conv(mri) * self.scale)


class WrongLogits(nn.Module):
    """A diagnoser that forgets its class count: one logit per subject."""

    def __init__(self, in_channels: int, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> DiagnoserOutput:
        features = F.adaptive_avg_pool3d(self.conv(x), 1).flatten(1)
        return DiagnoserOutput(self.head(features), features)


class TwoChannel(Coupling):
    """A diagnoser on MRI and PET, trained in one stage; ``peek`` reads the PET of subjects without it."""

    needs_synthesiser = False

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
        *,
        peek: bool = False,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__(context, build_synthesiser, build_diagnoser)
        self.peek = peek
        self.diagnoser = build_diagnoser(2)
        self.optimiser = torch.optim.Adam(self.diagnoser.parameters(), lr=1e-2, weight_decay=weight_decay)

    def modules(self) -> dict[str, nn.Module]:
        return {"diagnoser": self.diagnoser}

    def _pet(self, batch: Batch) -> Tensor:
        if self.peek:
            return batch.pet
        return torch.where(batch.has_pet.view(-1, 1, 1, 1, 1), batch.pet, torch.zeros_like(batch.pet))

    def _step(self, batch: Batch) -> Mapping[str, Tensor]:
        logits = self.diagnoser(torch.cat([batch.mri, self._pet(batch)], 1)).logits
        loss = F.cross_entropy(logits, batch.label)
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        return {"cls": loss.detach()}

    def stages(self) -> list[TrainingStage]:
        return [TrainingStage("diagnosis", self.modules(), {"diagnoser": self.optimiser}, self._step, 1)]

    def predict(self, batch: Batch) -> Prediction:
        logits = self.diagnoser(torch.cat([batch.mri, self._pet(batch)], 1)).logits
        sources: list[PetSource] = ["real" if has else "mean" for has in batch.has_pet.tolist()]
        return Prediction(logits.softmax(1)[:, 1], sources)


def test_a_third_party_coupling_that_keeps_the_contract_passes() -> None:
    check_coupling(Component("two-channel", TwoChannel, "", space={"weight_decay": FloatRange(1e-6, 1e-2)}))


def test_a_coupling_that_reads_missing_pet_fails() -> None:
    with pytest.raises(AssertionError, match="predict reads the PET of subjects without it"):
        check_coupling(TwoChannel, peek=True)


def test_a_diagnoser_with_the_wrong_logits_fails() -> None:
    with pytest.raises(AssertionError, match=r"logits of shape \(4, 1\), not \(4, 2\)"):
        check_diagnoser(WrongLogits)


def test_a_synthesiser_outside_the_intensity_range_fails() -> None:
    with pytest.raises(AssertionError, match=r"values outside \[-1, 1\]"):
        check_synthesiser(Unbounded)


def test_a_synthesiser_whose_state_is_lost_in_a_checkpoint_fails() -> None:
    with pytest.raises(AssertionError, match="does not survive a checkpoint"):
        check_synthesiser(Forgetful)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"width": FloatRange(1.0, 4.0)}, "'width': not a setting of the factory"),
        ({"gain": FloatRange(0.1, 1.0)}, r"the default 3.0 is outside \[0.1, 1.0\]"),
        ({"gain": FloatRange(0.0, 10.0, log=True)}, "a log scale needs low > 0"),
    ],
)
def test_a_search_space_that_does_not_fit_the_settings_fails(space: dict, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_space(Component("unbounded", Unbounded, "", space=space))


def test_the_guides_example_plugin_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/plugins.md's external plugin, and its 'Testing a plugin' test, as a plugin author runs them."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (tmp_path / "cdsf_bench_shallow.py").write_text(blocks[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, object] = {}
    kit_test = next(block for block in blocks if "from cdsf_bench.testing import" in block)
    exec(compile(kit_test, "tests/test_shallow.py", "exec"), namespace)
    test = namespace["test_shallow_keeps_the_contract"]
    assert callable(test)
    test()
