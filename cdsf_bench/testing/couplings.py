"""The check of a coupling: built, trained one step per stage and predicting as the engine does."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdsf_bench.interfaces import (
    Batch,
    Component,
    Coupling,
    DiagnoserOutput,
    PetSource,
    Prediction,
    SelectionMetric,
    TrainingContext,
    TrainingStage,
)
from cdsf_bench.testing.asserts import SHAPE, as_component, assert_equal, assert_volume, round_trip
from cdsf_bench.testing.networks import check_space

#: the training batch: six labelled subjects, three of them with PET, both classes in each half
HAS_PET: tuple[bool, ...] = (True, True, True, False, False, False)
LABELS: tuple[int, ...] = (0, 1, 0, 1, 0, 1)


def check_coupling(
    coupling: Component | type[Coupling],
    *,
    synthesiser: Callable[[], nn.Module] | None = None,
    diagnoser: Callable[..., nn.Module] | None = None,
    shape: tuple[int, int, int] = SHAPE,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **settings: Any,
) -> None:
    """A coupling trains through its stages and predicts as the engine expects.

    ``synthesiser()`` and ``diagnoser(in_channels, input_shape, num_classes)`` build the
    networks it is given (default: a one-layer synthesiser and a small batch-normalised
    diagnoser); ``settings`` are its own. A coupling that may take a synthesiser or not
    (``needs_synthesiser = None``) is checked both ways.
    """
    component = as_component(coupling, "coupling")
    cls = component.factory
    assert isinstance(cls, type) and issubclass(cls, Coupling), f"'{component.name}' is no Coupling subclass"
    assert cls.needs_synthesiser in (True, False, None), (
        f"'{component.name}': needs_synthesiser is not a bool/None"
    )
    assert cls.subjects in ("all", "with_pet"), f"'{component.name}': subjects is {cls.subjects!r}"
    device = torch.device(device)
    for with_synthesiser in {True: (True,), False: (False,), None: (True, False)}[cls.needs_synthesiser]:
        name = f"coupling '{component.name}' ({'with' if with_synthesiser else 'without'} a synthesiser)"
        _Harness(name, cls, synthesiser, diagnoser, with_synthesiser, shape, device, seed, settings).check()
    check_space(component)


class _Harness:
    """One coupling configuration, built and driven as the engine would drive it."""

    def __init__(
        self,
        name: str,
        cls: type[Coupling],
        synthesiser: Callable[[], nn.Module] | None,
        diagnoser: Callable[..., nn.Module] | None,
        with_synthesiser: bool,
        shape: tuple[int, int, int],
        device: torch.device,
        seed: int,
        settings: Mapping[str, Any],
    ) -> None:
        self.name, self.cls, self.shape, self.device, self.seed = name, cls, shape, device, seed
        self.synthesiser = synthesiser or _TinySynthesiser
        self.diagnoser = diagnoser or _TinyDiagnoser
        self.with_synthesiser = with_synthesiser
        self.settings = dict(settings)
        # the batches carry what a study never acquires only where the coupling declares it, as the core's
        self.truth, self.expected = cls.needs_pet_truth, cls.needs_pet_expected

    def build(self, build_seed: int) -> Coupling:
        torch.manual_seed(build_seed)
        context = TrainingContext(
            device=self.device,
            input_shape=self.shape,
            num_classes=2,
            epochs=1,
            learning_rate=1e-3,
            patience=None,
            select_on="auc",
            train_pet_mean=torch.zeros(1, 1, *self.shape, device=self.device),
            has_pet_truth=self.truth,
        )

        def build_synthesiser() -> nn.Module:
            return self.synthesiser().to(self.device)

        def build_diagnoser(in_channels: int, num_classes: int | None = None) -> nn.Module:
            classes = context.num_classes if num_classes is None else num_classes
            return self.diagnoser(in_channels=in_channels, input_shape=self.shape, num_classes=classes).to(
                self.device
            )

        coupling = self.cls(
            context, build_synthesiser if self.with_synthesiser else None, build_diagnoser, **self.settings
        )
        return coupling

    def batch(self, has_pet: tuple[bool, ...], labels: tuple[int, ...], missing_pet: float = 0.0) -> Batch:
        """A batch on the device; the PET of subjects without it is ``missing_pet`` (zero, as the core's).

        The PET is tanh(1.5 x + noise) of the MRI x; its noise-free part tanh(1.5 x) stands for
        E[PET | MRI] (``pet_expected``).
        """
        generator = torch.Generator().manual_seed(self.seed + 7)
        size = len(has_pet)
        mri = torch.rand(size, 1, *self.shape, generator=generator) * 2 - 1
        expected = torch.tanh(mri * 1.5)
        truth = torch.tanh(mri * 1.5 + 0.2 * torch.randn(mri.shape, generator=generator))
        present = torch.tensor(has_pet)
        pet = torch.where(present.view(-1, 1, 1, 1, 1), truth, torch.full_like(truth, missing_pet))
        label = torch.tensor(labels)
        return Batch(
            mri=mri.to(self.device),
            pet=pet.to(self.device),
            has_pet=present.to(self.device),
            label=label.to(self.device),
            index=torch.arange(size, device=self.device),
            pet_truth=truth.to(self.device) if self.truth else None,
            labelled=(label >= 0).to(self.device),
            pet_expected=expected.to(self.device) if self.expected else None,
        )

    def training_batch(self, stage: TrainingStage) -> Batch:
        has_pet, labels = HAS_PET, LABELS
        if stage.labels != "required":  # unlabelled subjects too, with PET and without
            has_pet, labels = (*has_pet, True, False), (*labels, -1, -1)
        if stage.subjects == "with_pet" or self.cls.subjects == "with_pet":
            keep = [i for i, present in enumerate(has_pet) if present]
            has_pet, labels = tuple(has_pet[i] for i in keep), tuple(labels[i] for i in keep)
        return self.batch(has_pet, labels)

    def train(self, coupling: Coupling) -> list[TrainingStage]:
        """Run one step of every stage, as the engine does; check each stage as it goes."""
        stages = coupling.stages()
        assert isinstance(stages, list) and stages, f"{self.name}: stages() gave no list of stages"
        owned = {id(m) for m in coupling.modules().values()}
        for stage in stages:
            where = f"{self.name}, stage '{getattr(stage, 'name', stage)}'"
            assert isinstance(stage, TrainingStage), f"{where}: not a TrainingStage"
            assert stage.modules and all(id(m) in owned for m in stage.modules.values()), (
                f"{where}: its modules must be some of coupling.modules()"
            )
            assert stage.select_on in get_args(SelectionMetric), f"{where}: select_on {stage.select_on!r}"
            assert stage.subjects in ("all", "with_pet"), f"{where}: subjects {stage.subjects!r}"
            assert stage.labels in ("required", "where_known", "unused"), f"{where}: labels {stage.labels!r}"
            assert isinstance(stage.epochs, int) and stage.epochs >= 0, f"{where}: epochs {stage.epochs!r}"
            trained = {id(p) for m in stage.modules.values() for p in m.parameters()}
            for key, optimiser in stage.optimisers.items():
                for group in optimiser.param_groups:
                    assert all(id(p) in trained for p in group["params"]), (
                        f"{where}: optimiser '{key}' updates parameters outside the stage's modules"
                    )
            for module in stage.modules.values():
                module.train()
            if stage.begin_epoch is not None:
                stage.begin_epoch(0)
            before = {k: v.detach().clone() for m in stage.modules.values() for k, v in _named(m)}
            losses = stage.step(self.training_batch(stage))
            assert isinstance(losses, Mapping) and losses, f"{where}: step() returned no loss terms"
            for key, value in losses.items():
                assert isinstance(value, Tensor) and value.dim() == 0, (
                    f"{where}: loss '{key}' is not a 0-d tensor"
                )
                assert bool(torch.isfinite(value)), f"{where}: loss '{key}' is {float(value)}"
            after = {k: v for m in stage.modules.values() for k, v in _named(m)}
            assert any(not torch.equal(before[k], after[k]) for k in before), (
                f"{where}: one step changed none of the stage's parameters"
            )
        return stages

    def predict(self, coupling: Coupling, batch: Batch) -> Prediction:
        for module in coupling.modules().values():
            module.eval()
        with torch.no_grad():
            prediction = coupling.predict(batch)
        where = f"{self.name}: predict"
        assert isinstance(prediction, Prediction), (
            f"{where} returned {type(prediction).__name__}, not Prediction"
        )
        probability = prediction.probability
        assert isinstance(probability, Tensor) and probability.shape == (len(batch),), (
            f"{where}: probability has shape {tuple(getattr(probability, 'shape', ()))}, not ({len(batch)},)"
        )
        assert probability.is_floating_point() and probability.device.type == self.device.type, (
            f"{where}: probability is {probability.dtype} on {probability.device}"
        )
        assert bool(((probability >= 0) & (probability <= 1)).all()), f"{where}: a probability outside [0, 1]"
        sources = list(prediction.pet_source)
        assert len(sources) == len(batch) and set(sources) <= set(get_args(PetSource)), (
            f"{where}: pet_source {sources} is not one of {get_args(PetSource)} per subject"
        )
        if not self.truth:  # only the oracle reads the real PET of a subject without it
            assert all(
                s != "real" for s, has in zip(sources, batch.has_pet.tolist(), strict=True) if not has
            ), f"{where}: pet_source says 'real' for a subject without PET"
        if prediction.synthetic is not None:
            assert_volume(f"{where}: synthetic", prediction.synthetic, batch.mri)
        return prediction

    def predictions(self, coupling: Coupling) -> list[Prediction]:
        """Predictions of a mixed batch and, unless it sees only subjects with PET, of one without PET.

        Each is predicted twice, the PET of the subjects without it zero and then noise: a
        coupling must not read it, so the two must agree.
        """
        layouts: list[tuple[tuple[bool, ...], tuple[int, ...]]] = [(HAS_PET, LABELS)]
        if self.cls.subjects == "with_pet":
            layouts = [((True,) * 4, (0, 1, 0, 1))]
        else:
            layouts.append(((False,) * 4, (0, 1, 0, 1)))
        results = []
        for has_pet, labels in layouts:
            first = self.predict(coupling, self.batch(has_pet, labels))
            noisy = self.predict(coupling, self.batch(has_pet, labels, missing_pet=0.7))
            what = "a batch without PET" if not any(has_pet) else "a mixed batch"
            _assert_same_prediction(
                f"{self.name}: predict reads the PET of subjects without it ({what}; has_pet is false)",
                first,
                noisy,
            )
            results.append(first)
        return results

    def check(self) -> None:
        coupling = self.build(self.seed)
        modules = coupling.modules()
        assert isinstance(modules, dict) and modules, f"{self.name}: modules() gave no modules"
        for key, module in modules.items():
            assert isinstance(module, nn.Module), f"{self.name}: module '{key}' is no nn.Module"
            for pname, value in [*module.named_parameters(), *module.named_buffers()]:
                assert value.device.type == self.device.type, (
                    f"{self.name}: '{key}.{pname}' is on {value.device}, not {self.device}"
                )
        self.train(coupling)
        trained = self.predictions(coupling)
        again = self.build(self.seed)
        self.train(again)
        for first, second in zip(trained, self.predictions(again), strict=True):
            _assert_same_prediction(f"{self.name}: the same seed trains to other predictions", first, second)
        restored = self.build(self.seed + 1)
        saved = round_trip({key: module.state_dict() for key, module in coupling.modules().items()})
        assert set(saved) == set(restored.modules()), f"{self.name}: modules() names differ between builds"
        for key, module in restored.modules().items():
            module.load_state_dict(saved[key])
        for first, second in zip(trained, self.predictions(restored), strict=True):
            _assert_same_prediction(f"{self.name}: the state does not survive a checkpoint", first, second)


class _TinySynthesiser(nn.Module):
    """One convolution, squashed to [-1, 1]: the synthesiser a coupling is checked with by default."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)

    def forward(self, mri: Tensor) -> Tensor:
        return torch.tanh(self.conv(mri))


class _TinyDiagnoser(nn.Module):
    """A batch-normalised convolution, pooled, then a linear head: the default diagnoser of the checks."""

    def __init__(self, in_channels: int, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        del input_shape
        self.conv = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.norm = nn.BatchNorm3d(4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: Tensor) -> DiagnoserOutput:
        features = F.adaptive_avg_pool3d(F.relu(self.norm(self.conv(x))), 1).flatten(1)
        return DiagnoserOutput(self.head(features), features)


def _assert_same_prediction(where: str, first: Prediction, second: Prediction) -> None:
    assert_equal(f"{where}: probability", second.probability, first.probability)
    assert list(first.pet_source) == list(second.pet_source), f"{where}: pet_source"
    assert (first.synthetic is None) == (second.synthetic is None), f"{where}: synthetic PET"
    if first.synthetic is not None and second.synthetic is not None:
        assert_equal(f"{where}: synthetic PET", second.synthetic, first.synthetic)


def _named(module: nn.Module) -> list[tuple[str, Tensor]]:
    return [(f"{id(module)}.{name}", p) for name, p in module.named_parameters()]
