"""The baseline couplings, end to end through the CLI, and the networks they bring.

End-to-end runs use the tiny preset on a 32-subject phantom (8 mm volumes, one epoch per
stage): with seed 0 its test split holds subjects with and without PET, so every PET
source a method can report shows up. Each method runs once per module and its run folder
is shared by the tests that read it. The unit tests drive the couplings directly on
8-voxel volumes to check what the runs cannot see: which parameters each update moves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result
from support import training_context
from torch import nn

from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Batch, TrainingContext
from cdsf_bench.metrics import DISEASE_SYNTHESIS_KEYS
from cdsf_bench.registry import default_registry
from cdsf_plugins.baselines import CompleteCase, DecoupledCoupling, MeanImpute, Oracle, SingleModality
from cdsf_plugins.mdm import MDM
from cdsf_plugins.patchgan import PatchGAN3D
from cdsf_plugins.unet3d import UNet3D

SUBJECTS = 32
COMMON = ["--diag", "mdm", "--preset", "tiny", "--seed", "0", "--epochs", "1"]
COMMON += ["--set", f"data.subjects={SUBJECTS}", "--set", "evaluate.bootstrap=20"]
TWO_SYNTHESIS_EPOCHS = "coupling.decoupled.synthesis_epochs=2"
METHODS: dict[str, list[str]] = {
    "joint": ["--synth", "ism", "--joint"],
    "decoupled": ["--synth", "ism", "--decoupled"],
    "single": ["--synth", "none"],
    "mean-impute": ["--synth", "none", "--coupling", "mean-impute"],
    "complete-case": ["--synth", "none", "--coupling", "complete-case"],
    "oracle": ["--synth", "none", "--coupling", "oracle"],
    "unet3d-joint": ["--synth", "unet3d", "--joint"],
    # two synthesis epochs: the setting reaches the stage, and the stages differ in length
    "unet3d-decoupled": ["--synth", "unet3d", "--decoupled", "--set", TWO_SYNTHESIS_EPOCHS],
}
#: per method: the PET sources its test predictions may report, its stages and epochs per stage
EXPECTED: dict[str, tuple[set[str], list[tuple[str, int]]]] = {
    "decoupled": ({"real", "synthetic"}, [("synthesis", 1), ("diagnosis", 1)]),
    "single": ({"none"}, [("diagnosis", 1)]),
    "mean-impute": ({"real", "mean"}, [("diagnosis", 1)]),
    "complete-case": ({"real"}, [("diagnosis", 1)]),
    "oracle": ({"real"}, [("diagnosis", 1)]),
    "unet3d-joint": ({"real", "synthetic"}, [("joint", 1)]),
    "unet3d-decoupled": ({"real", "synthetic"}, [("synthesis", 2), ("diagnosis", 1)]),
}
SYNTHESISES = {"decoupled", "unet3d-joint", "unet3d-decoupled"}
METRICS_KEYS = {"diagnosis", "synthesis", "selection", "stages", "n", "task", "method", "seed"}
DIAGNOSIS_KEYS = {"acc", "bacc", "sen", "spe", "f1", "auc", "auc_ci_low", "auc_ci_high", "mcc"}


# --- the CLI, once per method ------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Quiet progress and a cohort cache private to this module (built once, then hit)."""
    return {"CDSF_BENCH_QUIET": "1", "CDSF_BENCH_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def invoke(cli_env: dict[str, str]) -> Callable[[list[str]], Result]:
    def call(args: list[str]) -> Result:
        return CliRunner().invoke(main, args, env=cli_env)

    return call


@pytest.fixture(scope="module")
def run_folder(
    tmp_path_factory: pytest.TempPathFactory, invoke: Callable[[list[str]], Result]
) -> Callable[[str], Path]:
    """The run folder of a method in ``METHODS``, trained on first use."""
    root = tmp_path_factory.mktemp("runs")
    done: dict[str, Path] = {}

    def folder(method: str) -> Path:
        if method not in done:
            out = root / method
            result = invoke(["run", *METHODS[method], *COMMON, "--out", str(out)])
            assert result.exit_code == 0, f"{method}: {result.output}\n{result.exception!r}"
            done[method] = out
        return done[method]

    return folder


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_plugins_are_registered_with_their_settings() -> None:
    registry = default_registry()
    assert {"decoupled", "single", "mean-impute", "complete-case", "oracle"} <= set(
        registry.names("coupling")
    )
    assert "unet3d" in registry.names("synthesiser")
    decoupled = registry.get("coupling", "decoupled").parameters()
    assert decoupled["w_l1"] == 100.0
    assert decoupled["synthesis_lr"] == 2e-4
    assert decoupled["synthesis_epochs"] == 0
    assert decoupled["predict_with"] == "real"
    assert registry.get("coupling", "single").parameters() == {"weight_decay": 1e-4}
    assert registry.get("synthesiser", "unet3d").parameters() == {
        "widths": (8, 16, 32, 64),
        "norm": "instance",
    }


@pytest.mark.parametrize("method", list(EXPECTED))
def test_method_runs_end_to_end(method: str, run_folder: Callable[[str], Path]) -> None:
    folder = run_folder(method)
    sources, stages = EXPECTED[method]
    metrics = read_json(folder / "metrics.json")
    data = read_json(folder / "data.json")
    assert set(metrics) == METRICS_KEYS
    assert set(metrics["diagnosis"]) >= DIAGNOSIS_KEYS
    assert [s["stage"] for s in metrics["stages"]] == [name for name, _ in stages]
    assert metrics["selection"]["metric"] == "auc"  # the last stage selects on the run's metric
    if method in SYNTHESISES:
        assert set(metrics["synthesis"]) == {"psnr", "ssim", "mae", *DISEASE_SYNTHESIS_KEYS}
    else:
        assert metrics["synthesis"] is None

    predictions = pd.read_csv(folder / "predictions.csv")
    assert set(predictions["pet_source"]) == sources
    assert len(predictions) == metrics["n"]["test"]
    # real PET is used exactly where the subject has it: everywhere for the oracle, never for MRI alone
    expected_real = {"oracle": data["subjects"]["test"], "single": 0}.get(method, data["with_pet"]["test"])
    assert int((predictions["pet_source"] == "real").sum()) == expected_real

    history = pd.read_csv(folder / "history.csv")
    assert list(history.groupby("stage", sort=False).size().items()) == stages


def test_decoupled_synthesis_stage_selects_on_mae(run_folder: Callable[[str], Path]) -> None:
    metrics = read_json(run_folder("decoupled") / "metrics.json")
    synthesis, diagnosis = metrics["stages"]
    assert (synthesis["stage"], synthesis["metric"]) == ("synthesis", "mae")
    assert (diagnosis["stage"], diagnosis["metric"]) == ("diagnosis", "auc")
    history = pd.read_csv(run_folder("decoupled") / "history.csv")
    assert {"train_D", "train_G", "train_adv", "train_l1", "val_mae"} <= set(history.columns)
    assert history.loc[history["stage"] == "diagnosis", "train_cls"].notna().all()


def test_complete_case_tests_only_subjects_with_pet(run_folder: Callable[[str], Path]) -> None:
    folder = run_folder("complete-case")
    metrics, data = read_json(folder / "metrics.json"), read_json(folder / "data.json")
    assert data["with_pet"]["test"] < data["subjects"]["test"]  # the phantom really withholds some
    # the diagnoser trains on the labelled subjects with PET: the other diagnoses' subjects
    # (all with PET, there for a generator) are training subjects, but not n.train
    labelled_with_pet = data["with_pet"]["train"] - data["unlabelled"]["train"]
    assert metrics["n"] == {**data["with_pet"], "train": labelled_with_pet}
    assert data["unlabelled"]["train"] > 0


def test_methods_of_one_seed_share_splits_and_batch_order(run_folder: Callable[[str], Path]) -> None:
    fingerprints = {
        method: read_json(run_folder(method) / "data.json")["fingerprints"]
        for method in ("joint", "decoupled", "single", "mean-impute")
    }
    assert all(set(f) == {"splits_sha256", "batch_order_sha256"} for f in fingerprints.values())
    assert len({json.dumps(f, sort_keys=True) for f in fingerprints.values()}) == 1


def test_oracle_refuses_data_without_pet_truth(tmp_path: Path, invoke: Callable[[list[str]], Result]) -> None:
    phantom = tmp_path / "phantom"
    made = invoke(["data", "phantom", "--out", str(phantom), "--subjects", "16", "--resolution", "8"])
    assert made.exit_code == 0, made.output
    table = pd.read_csv(phantom / "participants.tsv", sep="\t")
    manifest = phantom / "manifest.tsv"
    table.drop(columns=["pet_truth"]).to_csv(manifest, sep="\t", index=False)
    result = invoke(
        ["run", *METHODS["oracle"], *COMMON, "--data", str(manifest), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2, result.output
    assert "needs every subject's real PET" in " ".join(result.output.split())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--synth", "ism", "--coupling", "single"], "uses no synthesiser"),
        (["--synth", "none", "--decoupled"], "trains a synthesiser"),
    ],
)
def test_synthesiser_choice_is_checked(
    args: list[str], message: str, tmp_path: Path, invoke: Callable[[list[str]], Result]
) -> None:
    result = invoke(["run", *args, *COMMON, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


# --- the couplings, driven directly ------------------------------------------------------

SHAPE = (8, 8, 8)


def context(**overrides: object) -> TrainingContext:
    values: dict = {"epochs": 3, "train_pet_mean": torch.full((1, 1, *SHAPE), 0.25), "has_pet_truth": True}
    return training_context(SHAPE, **{**values, **overrides})


def build_synthesiser() -> nn.Module:
    return UNet3D(widths=(4, 8))


def build_diagnoser(in_channels: int, num_classes: int | None = None) -> nn.Module:
    return MDM(in_channels, SHAPE, num_classes or 2, widths=(4, 4, 4, 4, 4))


def batch(with_truth: bool = True) -> Batch:
    torch.manual_seed(1)
    has_pet = torch.tensor([True, False, True, False])
    truth = torch.rand(4, 1, *SHAPE) * 2 - 1
    return Batch(
        mri=torch.rand(4, 1, *SHAPE) * 2 - 1,
        pet=truth * has_pet.view(-1, 1, 1, 1, 1),
        has_pet=has_pet,
        label=torch.tensor([0, 1, 1, 0]),
        index=torch.arange(4),
        pet_truth=truth if with_truth else None,
    )


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def decoupled(**settings: object) -> DecoupledCoupling:
    torch.manual_seed(0)
    return DecoupledCoupling(
        context(), build_synthesiser, build_diagnoser, discriminator_widths=(4, 8), **settings
    )


def test_decoupled_stages_and_their_settings() -> None:
    coupling = decoupled(synthesis_epochs=5)
    synthesis, diagnosis = coupling.stages()
    assert (synthesis.name, synthesis.select_on, synthesis.subjects, synthesis.epochs) == (
        "synthesis",
        "mae",
        "with_pet",
        5,
    )
    assert set(synthesis.modules) == {"synthesiser", "discriminator"}
    assert (diagnosis.name, diagnosis.select_on, diagnosis.subjects, diagnosis.epochs) == (
        "diagnosis",
        "auc",
        "all",
        3,
    )
    assert set(diagnosis.modules) == {"diagnoser"}
    assert decoupled().stages()[0].epochs == 3  # 0 means the run's epochs
    for group in coupling.optimise_synthesiser.param_groups + coupling.critic.optimiser.param_groups:
        assert (group["lr"], group["betas"]) == (2e-4, (0.5, 0.999))
    assert coupling.optimise_diagnoser.param_groups[0]["weight_decay"] == 1e-4


def test_decoupled_discriminator_follows_the_generators_memory_format() -> None:
    def conv_weights(module: nn.Module) -> list[torch.Tensor]:
        return [p for p in module.parameters() if p.dim() == 5 and p.shape[1] > 1]

    assert all(w.is_contiguous() for w in conv_weights(decoupled().critic.network))

    def channels_last() -> nn.Module:
        return build_synthesiser().to(memory_format=torch.channels_last_3d)

    coupling = DecoupledCoupling(context(), channels_last, build_diagnoser, discriminator_widths=(4, 8))
    weights = conv_weights(coupling.critic.network)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in weights)
    assert not any(w.is_contiguous() for w in weights)


def test_decoupled_synthesis_step_moves_the_gan_only() -> None:
    coupling = decoupled()
    real = batch()
    real.has_pet[:] = True  # the synthesis stage draws subjects with PET only
    real.pet = real.pet_truth
    generator, critic, diagnoser = (
        snapshot(m) for m in (coupling.synthesiser, coupling.critic.network, coupling.diagnoser)
    )
    terms = coupling.synthesis_step(real)
    assert set(terms) == {"D", "G", "adv", "l1"} and all(v.dim() == 0 for v in terms.values())
    losses = {key: float(value) for key, value in terms.items()}
    assert losses["G"] == pytest.approx(losses["adv"] + 100.0 * losses["l1"], rel=1e-5)
    assert moved(generator, coupling.synthesiser) and moved(critic, coupling.critic.network)
    assert not moved(diagnoser, coupling.diagnoser)
    assert all(p.requires_grad for p in coupling.critic.network.parameters())


def test_decoupled_diagnosis_step_freezes_the_generator() -> None:
    coupling = decoupled()
    generator, diagnoser = snapshot(coupling.synthesiser), snapshot(coupling.diagnoser)
    losses = coupling.step(batch())
    assert set(losses) == {"cls", "skipped_single"}
    assert not moved(generator, coupling.synthesiser) and not coupling.synthesiser.training
    assert moved(diagnoser, coupling.diagnoser)


@pytest.mark.parametrize(
    "predict_with, sources", [("real", ["real", "synthetic"] * 2), ("synthetic", ["synthetic"] * 4)]
)
def test_decoupled_predicts_with_real_or_synthetic_pet(predict_with: str, sources: list[str]) -> None:
    coupling = decoupled(predict_with=predict_with)
    coupling.synthesiser.eval()
    coupling.diagnoser.eval()
    with torch.no_grad():
        prediction = coupling.predict(batch())
    assert prediction.pet_source == sources
    assert prediction.synthetic is not None and prediction.synthetic.shape == (4, 1, *SHAPE)
    assert ((prediction.probability >= 0) & (prediction.probability <= 1)).all()


def test_decoupled_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="predict_with"):
        decoupled(predict_with="mean")
    with pytest.raises(InputError, match="synthesis_epochs"):
        decoupled(synthesis_epochs=-1)


def test_pet_channels_of_the_diagnosis_only_couplings() -> None:
    data = batch()
    missing = ~data.has_pet
    single = SingleModality(context(), None, build_diagnoser)
    assert single.diagnoser.features[0][0].in_channels == 1
    assert single.pet_channel(data, training=True) == (None, ["none"] * 4, None)

    pet, sources, synthetic = MeanImpute(context(), None, build_diagnoser).pet_channel(data, training=True)
    assert sources == ["real", "mean", "real", "mean"] and synthetic is None
    assert torch.equal(pet[data.has_pet], data.pet[data.has_pet])
    assert (pet[missing] == 0.25).all()

    assert CompleteCase.subjects == "with_pet"
    pet, sources, _ = Oracle(context(), None, build_diagnoser).pet_channel(data, training=True)
    assert torch.equal(pet, data.pet_truth) and sources == ["real"] * 4
    with pytest.raises(InputError, match="pet_truth"):
        Oracle(context(), None, build_diagnoser).pet_channel(batch(with_truth=False), training=False)


@pytest.mark.parametrize("coupling_class", [SingleModality, MeanImpute, CompleteCase, Oracle])
def test_diagnosis_only_step_trains_the_diagnoser(coupling_class: type) -> None:
    torch.manual_seed(0)
    coupling = coupling_class(context(), None, build_diagnoser)
    (stage,) = coupling.stages()
    assert (stage.name, stage.subjects, stage.epochs) == ("diagnosis", coupling_class.subjects, 3)
    before = snapshot(coupling.diagnoser)
    losses = stage.step(batch())
    assert losses["cls"].dim() == 0 and float(losses["cls"]) > 0
    assert moved(before, coupling.diagnoser)


# --- UNet3D and PatchGAN3D ---------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 16, 24), (9, 10, 13), (20, 24, 24)])
def test_unet3d_keeps_any_size_in_tanh_range(size: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = UNet3D(widths=(4, 8, 8, 16))
    assert net.size_multiple == 8
    out = net(torch.rand(2, 1, *size) * 2 - 1)
    assert out.shape == (2, 1, *size)
    assert out.abs().max() <= 1


def test_unet3d_structure_has_skips_and_no_norm_before_tanh() -> None:
    net = UNet3D()
    assert [block[0].out_channels for block in net.down] == [16, 32, 64]
    assert [block[0].stride for block in net.down] == [(2, 2, 2)] * 3
    assert all(isinstance(block[0], nn.ConvTranspose3d) for block in net.up)
    # below the bottleneck every up-conv reads its input concatenated with a skip
    assert [block[0].in_channels for block in net.up] == [32, 64, 64]
    conv, tanh = net.head
    assert isinstance(conv, nn.Conv3d) and isinstance(tanh, nn.Tanh)
    assert conv.in_channels == 16 and conv.out_channels == 1
    with pytest.raises(ValueError, match="two widths"):
        UNet3D(widths=(8,))


def test_unet3d_channels_last_and_gradients() -> None:
    torch.manual_seed(0)
    net = UNet3D(widths=(4, 8)).to(memory_format=torch.channels_last_3d)
    mri = (torch.rand(2, 1, 8, 8, 8) * 2 - 1).contiguous(memory_format=torch.channels_last_3d)
    net(mri).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_patchgan_gives_patch_logits() -> None:
    torch.manual_seed(0)
    net = PatchGAN3D()
    logits = net(torch.rand(2, 2, 20, 24, 24))
    assert logits.shape == (2, 1, 3, 3, 3)
    first = net.features[0]
    assert not any(isinstance(m, nn.InstanceNorm3d | nn.BatchNorm3d | nn.GroupNorm) for m in first)
    assert all(isinstance(block[1], nn.InstanceNorm3d) for block in net.features[1:])
    assert all(block[-1].negative_slope == 0.2 for block in net.features)
    assert net.logits.out_channels == 1
    assert PatchGAN3D(widths=(4,))(torch.rand(1, 2, 1, 1, 1)).shape == (1, 1, 1, 1, 1)
