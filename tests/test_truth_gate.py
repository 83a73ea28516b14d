"""The truth gate: what a study never acquires reaches only the couplings that declare they need it.

Runs go end to end (``run.execute``, tiny preset) on a phantom whose E[PET | MRI] is set to its
real PET, served by a data source of this module, so that both hidden volumes exist; spies
subclass the built-in couplings and record what every batch they meet carries. The runs are
shared by the tests of this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cdsf_bench import Component, hookimpl
from cdsf_bench import config as cfg
from cdsf_bench.assemble import assemble, split_cohort
from cdsf_bench.cli import main
from cdsf_bench.data.pipeline import DevicePipeline, HiddenVolumes
from cdsf_bench.data.sources import PhantomSource
from cdsf_bench.data.splits import make_splits
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Batch, Cohort, DataSettings
from cdsf_bench.registry import Registry, build_registry
from cdsf_bench.run import execute
from cdsf_bench.settings import AugmentSettings, RunConfig
from cdsf_plugins.baselines import MeanImpute, Oracle, PetChannel
from cdsf_plugins.oracle_synthesis import OracleSynthesis

SPEC = "phantom-expected"
FLAGS = {"preset": "tiny", "data.spec": SPEC, "data.subjects": 32, "method.synth": "none"}
FLAGS |= {"train.epochs": 2, "evaluate.bootstrap": 0, "seed": 0}


class _ExpectedPhantom(PhantomSource):
    """The phantom, with E[PET | MRI] equal to its real PET (a PET without PET-only terms)."""

    name = "phantom-expected"
    description = "the phantom with pet_expected = pet_truth (tests only)"

    def detect(self, spec: str) -> bool:
        return spec in (SPEC, f"{SPEC}-missing")

    def load(self, spec: str, settings: DataSettings) -> Cohort:
        cohort = super().load("phantom", settings)
        expected = cohort.pet_truth if spec == SPEC else None
        return dataclasses.replace(cohort, pet_expected=expected)


class _Spy:
    """Records, for every batch its PET channel is asked for, what the batch carries."""

    seen: ClassVar[list[dict[str, Any]]]

    def pet_channel(self, batch: Batch, training: bool) -> PetChannel:
        self.seen.append(
            {
                "training": training,
                "rows": batch.index.tolist(),
                "pet_truth": batch.pet_truth is not None,
                "pet_expected": batch.pet_expected is not None,
            }
        )
        return super().pet_channel(batch, training)  # type: ignore[misc]


class SpyMeanImpute(_Spy, MeanImpute):
    seen: ClassVar[list[dict[str, Any]]] = []


class SpyOracle(_Spy, Oracle):
    seen: ClassVar[list[dict[str, Any]]] = []


class SpyOracleSynthesis(_Spy, OracleSynthesis):
    seen: ClassVar[list[dict[str, Any]]] = []


SPIES = {
    "spy-mean-impute": SpyMeanImpute,
    "spy-oracle": SpyOracle,
    "spy-oracle-synthesis": SpyOracleSynthesis,
}


class _Plugin:
    @hookimpl
    def cdsf_bench_couplings(self) -> list[Component]:
        return [Component(name, spy, f"{name} (tests)") for name, spy in SPIES.items()]

    @hookimpl
    def cdsf_bench_data_sources(self) -> list[Component]:
        return [Component(SPEC, _ExpectedPhantom, "the phantom with pet_expected (tests)")]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry([_Plugin()])


def _config(registry: Registry, coupling: str, spec: str = SPEC) -> RunConfig:
    return cfg.resolve(registry, None, (), {**FLAGS, "method.coupling": coupling, "data.spec": spec})


@pytest.fixture(scope="module")
def runs(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The run folder of a spy coupling, trained on first use (its spy's records kept)."""
    root = tmp_path_factory.mktemp("gate")
    done: dict[str, Path] = {}

    def folder(coupling: str) -> Path:
        if coupling not in done:
            SPIES[coupling].seen = []
            done[coupling] = execute(_config(registry, coupling), registry, root / coupling).folder
        return done[coupling]

    return folder


@pytest.mark.parametrize(
    "coupling, carried",
    [
        ("spy-mean-impute", set()),
        ("spy-oracle", {"pet_truth"}),
        ("spy-oracle-synthesis", {"pet_expected"}),
    ],
)
def test_a_hidden_volume_reaches_exactly_the_couplings_that_declare_it(
    coupling: str, carried: set[str], runs: Callable[[str], Path], registry: Registry
) -> None:
    runs(coupling)
    seen = SPIES[coupling].seen
    config = _config(registry, coupling)
    _, _, splits, _ = split_cohort(config, _ExpectedPhantom().load(SPEC, config.data))
    rows = {name: set(splits.rows(name).tolist()) for name in ("train", "val", "test")}
    trained = set().union(*(r["rows"] for r in seen if r["training"]))
    predicted = set().union(*(r["rows"] for r in seen if not r["training"]))
    # the spy met training, validation and test batches ...
    assert trained and trained <= rows["train"]
    assert rows["val"] <= predicted and rows["test"] <= predicted
    # ... and each carried exactly what the coupling declares
    for name in ("pet_truth", "pet_expected"):
        assert all(r[name] is (name in carried) for r in seen), name


def test_the_engine_scores_withheld_pet_for_a_coupling_that_never_meets_it(
    runs: Callable[[str], Path],
) -> None:
    """Synthesis of subjects without PET is scored against the withheld PET (the perfect
    generator's E[PET | MRI] equals it here, so its error there is zero)."""
    predictions = pd.read_csv(runs("spy-oracle-synthesis") / "predictions.csv")
    withheld = predictions[predictions["has_pet"] == 0]
    assert len(withheld) and np.allclose(withheld["synth_mae"], 0.0, atol=1e-6)


def test_where_the_expected_pet_is_the_real_pet_the_oracle_synthesiser_is_the_oracle(
    runs: Callable[[str], Path],
) -> None:
    oracle = pd.read_csv(runs("spy-oracle") / "predictions.csv")
    synthesis = pd.read_csv(runs("spy-oracle-synthesis") / "predictions.csv")
    assert list(oracle["participant_id"]) == list(synthesis["participant_id"])
    assert oracle["probability"].tolist() == synthesis["probability"].tolist()  # bit for bit
    assert set(oracle["pet_source"]) == {"real"}
    expected = np.where(synthesis["has_pet"] == 1, "real", "synthetic")
    assert synthesis["pet_source"].tolist() == expected.tolist()


def test_the_oracle_synthesisers_inputs_are_the_oracles_batch_for_batch(registry: Registry) -> None:
    """Augmented training batches and evaluation batches alike, compared exactly."""
    config = _config(registry, "oracle-synthesis")
    cohort, labels, splits, _ = split_cohort(config, _ExpectedPhantom().load(SPEC, config.data))
    augment = AugmentSettings(enabled=True, rotate_deg=5.0, translate_vox=1.0, intensity=0.05)
    pipelines = {}
    models = {}
    for name, coupling_class in (("oracle", Oracle), ("oracle-synthesis", OracleSynthesis)):
        pipelines[name] = DevicePipeline(
            cohort, labels, splits, device=torch.device("cpu"), seed=0, batch_size=4, augment=augment,
            hidden=HiddenVolumes.declared_by(coupling_class),
        )  # fmt: skip
        models[name] = assemble(
            _config(registry, name), registry, cohort, labels, splits, torch.device("cpu")
        )
    draws = {name: [*pipe.train_batches(1), *pipe.eval_batches("test")] for name, pipe in pipelines.items()}
    assert len(draws["oracle"]) == len(draws["oracle-synthesis"]) > 1
    for ours, theirs in zip(draws["oracle-synthesis"], draws["oracle"], strict=True):
        for training in (True, False):
            mine = models["oracle-synthesis"].coupling.pet_channel(ours, training)  # type: ignore[attr-defined]
            oracle = models["oracle"].coupling.pet_channel(theirs, training)  # type: ignore[attr-defined]
            assert torch.equal(mine.pet, oracle.pet)


def test_augmentation_moves_the_expected_pet_with_the_pet() -> None:
    """E[PET | MRI] equal to the MRI, the PET too: one rigid transform leaves the three equal."""
    rng = np.random.default_rng(0)
    n, shape = 12, (10, 10, 10)
    mri = rng.uniform(-1, 1, (n, *shape)).astype(np.float16)
    table = pd.DataFrame({"participant_id": [f"s{i}" for i in range(n)], "diagnosis": "CN"})
    cohort = Cohort(
        table, mri, mri.copy(), np.ones(n, bool), np.eye(4), np.ones(shape, bool), pet_expected=mri
    )
    labels = np.array([0, 1] * (n // 2))
    splits = make_splits(table, labels, val=0.25, test=0.25, seed=0)
    augment = AugmentSettings(enabled=True, rotate_deg=5.0, translate_vox=1.0, intensity=0.0)
    pipe = DevicePipeline(
        cohort, labels, splits, device=torch.device("cpu"), seed=0, batch_size=4, augment=augment,
        hidden=HiddenVolumes(pet_expected=True),
    )  # fmt: skip
    batch = next(iter(pipe.train_batches(0)))
    assert batch.pet_expected is not None and batch.pet_truth is None
    original = torch.from_numpy(mri[batch.index.numpy()]).float().unsqueeze(1)
    assert not torch.allclose(batch.pet_expected, original)  # it did move
    assert torch.allclose(batch.pet_expected, batch.pet, atol=1e-6)
    assert torch.equal(batch.take(slice(1, 3)).pet_expected, batch.pet_expected[1:3])


def test_a_coupling_that_needs_the_expected_pet_is_refused_on_a_cohort_without_it(
    registry: Registry,
) -> None:
    config = _config(registry, "oracle-synthesis", f"{SPEC}-missing")
    cohort, labels, splits, _ = split_cohort(config, _ExpectedPhantom().load(f"{SPEC}-missing", config.data))
    with pytest.raises(
        InputError, match=r"Coupling 'oracle-synthesis' needs E\[PET \| MRI\] for every subject"
    ):
        assemble(config, registry, cohort, labels, splits, torch.device("cpu"))


def test_the_refusal_exits_2_naming_the_coupling_and_the_need(tmp_path: Path) -> None:
    runner = CliRunner()
    phantom = tmp_path / "phantom"
    made = runner.invoke(
        main, ["data", "phantom", "--out", str(phantom), "--subjects", "16", "--resolution", "8"]
    )
    assert made.exit_code == 0, made.output
    table = pd.read_csv(phantom / "participants.tsv", sep="\t")
    manifest = phantom / "manifest.tsv"  # a manifest never carries E[PET | MRI]
    table.drop(columns=["pet_expected"], errors="ignore").to_csv(manifest, sep="\t", index=False)
    args = ["run", "--synth", "none", "--coupling", "oracle-synthesis", "--preset", "tiny"]
    result = runner.invoke(main, [*args, "--data", str(manifest), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "Coupling 'oracle-synthesis' needs E[PET | MRI] for every subject" in message
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
