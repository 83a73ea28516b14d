"""The typed settings of a run: one frozen dataclass per configuration section.

A resolved configuration is plain data (nested dicts of TOML values, what config.toml
holds); code reads it through :class:`RunConfig`, so a misspelt key or a wrong type is a
type checker's error, not a KeyError in the middle of a run. Each section's defaults are
the field defaults of its type (``[data]``'s those of
:class:`~cdsf_bench.interfaces.DataSettings`): the resolver's table of defaults
(``config.DEFAULTS``) is derived from them, in field order, which is the key order of
config.toml. :func:`check_against` is the one check of a table of settings against its
defaults (names, types, coercion), for the core's sections, the plugins' and the data
sources' own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

import tomli_w

from cdsf_bench.errors import ConfigError
from cdsf_bench.interfaces import DataSettings, Method, SelectionMetric
from cdsf_bench.ranges import MAX_SEED, check_finite, within

#: the trackers a run reports to, one table of settings each (``--track NAME``,
#: ``--set track.NAME.KEY=VALUE``); absent from a run that tracks nothing, so its config is unchanged
TRACK = "track"
#: ``data.spec``: what ``--data`` names where nothing is given
DATA_SPEC = "phantom"
#: ``data.synthesis_subjects``: which subjects train the synthesiser, the task's or also every
#: other diagnosis's with PET (data/labels.py); "all_diagnoses" by the rule of
#: benchmarks/suites/cdsf-synthesis-defaults.toml (docs/methods.md). Not a source's setting:
#: neither in DataSettings nor in the cache key.
SYNTHESIS_SUBJECTS = "all_diagnoses"
#: ``train.patience_from``: when epochs without improvement start to count (cdsf_bench/recipe.py)
PATIENCE_FROM = ("start", "above_chance")


@dataclass(frozen=True)
class SplitSettings:
    """``[split]``: the subject-level hold-out split, or one fold of a cross-validation."""

    val: float = field(default=0.2, metadata=within(0.0, 1.0, low_open=True, high_open=True))
    test: float = field(default=0.2, metadata=within(0.0, 1.0, low_open=True, high_open=True))
    folds: int = field(default=0, metadata=within(0, 1000))  # 0: a single hold-out split
    fold: int = field(default=0, metadata=within(0, 999))


@dataclass(frozen=True)
class TrainSettings:
    """``[train]``: what every stage of training is given."""

    epochs: int = field(default=25, metadata=within(1, 100_000))
    batch_size: int = field(default=4, metadata=within(1, 4096))
    learning_rate: float = field(default=1e-3, metadata=within(0.0, 10.0, low_open=True))
    patience: int = field(default=8, metadata=within(0, 100_000))  # 0: no early stopping
    select_on: SelectionMetric = "auc"
    # the training recipe (cdsf_bench/recipe.py): a linear learning-rate warm-up over this many
    # epochs (0: none); the decay of an exponential moving average of the weights, validated
    # and selected in their place (0: none); when epochs without improvement start to count
    # towards patience, "start" or "above_chance"
    warmup_epochs: int = field(default=0, metadata=within(0, 100_000))
    ema_decay: float = field(default=0.0, metadata=within(0.0, 1.0, high_open=True))
    patience_from: str = "start"


@dataclass(frozen=True)
class AugmentSettings:
    """``[augment]``: the random rigid motion and intensity jitter of training batches."""

    enabled: bool = True
    rotate_deg: float = field(default=3.0, metadata=within(0.0, 45.0))
    translate_vox: float = field(default=1.0, metadata=within(0.0, 16.0))
    intensity: float = field(default=0.05, metadata=within(0.0, 1.0, high_open=True))


@dataclass(frozen=True)
class PrecisionSettings:
    """``[precision]``: bf16 autocast, channels-last-3D memory and torch.compile."""

    mixed: bool = True
    channels_last: bool = True
    compile: bool = False


@dataclass(frozen=True)
class EvaluateSettings:
    """``[evaluate]``: how the test split is scored and what of it is written."""

    bootstrap: int = field(default=1000, metadata=within(0, 1_000_000))
    save_synthetic: bool = True
    # also write each test subject's synthetic PET on its own MRI's grid (file cohorts)
    native_space: bool = False
    # test on a fresh phantom cohort of this many subjects (0: the test split)
    phantom_test_subjects: int = field(default=0, metadata=within(0, 1_000_000))
    # select the epoch and the threshold on a fresh phantom cohort of this many subjects
    # (0: the split's validation subjects; cdsf_bench/protocol.py)
    phantom_val_subjects: int = field(default=0, metadata=within(0, 1_000_000))
    # re-estimate every batch-norm layer's running statistics of a stage's modules on its
    # training subjects once its selected state is restored (cdsf_bench/batchnorm.py)
    batchnorm_reestimation: bool = False
    # synthesis also scored in the peers' conventions (cdsf_bench/conventions.py): PSNR of the
    # whole grid on [-1, 1] and per axial slice on 0-255; MONAI's MS-SSIM (the diffusion extra)
    peer_psnr: bool = False
    ms_ssim: bool = False
    # the run's energy and CO2-equivalent estimate by CodeCarbon, offline (the carbon extra;
    # cdsf_bench/cost.py), for the electricity mix of the country with this ISO 3166-1 alpha-3
    # code, which a run with carbon = true must name
    carbon: bool = False
    carbon_country: str = ""


#: a ``[seeds]`` value that leaves the source to the seed it derives from
FROM_RUN_SEED = -1


@dataclass(frozen=True)
class SeedSettings:
    """``[seeds]``: one seed per source of run-to-run variance, so that a study can vary one
    while the others stay (benchmarks/suites/variance-sources.toml).

    Each is -1 (:data:`FROM_RUN_SEED`) by default: the run's ``seed`` then stands for it,
    exactly the run the seed alone makes. ``init`` seeds torch's and NumPy's global
    generators (the networks' initial weights and whatever a plugin draws from them while
    training: dropout, noise); ``batches`` the
    batch order and augmentation; ``split`` the test split (and the folds); ``validation`` which
    of the remaining subjects validate, the test split untouched. The cohort's own seed is
    ``data.phantom_seed``.
    """

    init: int = field(default=FROM_RUN_SEED, metadata=within(FROM_RUN_SEED, MAX_SEED))
    batches: int = field(default=FROM_RUN_SEED, metadata=within(FROM_RUN_SEED, MAX_SEED))
    split: int = field(default=FROM_RUN_SEED, metadata=within(FROM_RUN_SEED, MAX_SEED))
    validation: int = field(default=FROM_RUN_SEED, metadata=within(FROM_RUN_SEED, MAX_SEED))


def section_defaults(settings: type) -> dict[str, Any]:
    """A settings type's defaults as a config section, in field order."""
    return {f.name: f.default for f in fields(settings)}


def data_defaults() -> dict[str, Any]:
    """``[data]``: the spec, every :class:`DataSettings` field and ``synthesis_subjects``.

    ``data.phantom`` is a table of phantom settings here, (name, value) pairs in DataSettings.
    """
    return {
        "spec": DATA_SPEC,
        **section_defaults(DataSettings),
        "phantom": {},
        "synthesis_subjects": SYNTHESIS_SUBJECTS,
    }


def type_ok(default: Any, value: Any) -> bool:
    """Whether ``value`` may stand where ``default`` is (an integer may stand for a float)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, tuple | list):
        return isinstance(value, list | tuple)
    return isinstance(value, type(default))


def _coerce(default: Any, value: Any) -> Any:
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, tuple):
        return tuple(value)
    return value


def check_against(defaults: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    """Check keys and types of ``given`` against ``defaults``; return the merged section."""
    out = dict(defaults)
    for key, value in given.items():
        path = f"{where}.{key}" if where else key
        if key not in defaults:
            close = [k for k in defaults if k.startswith(key[:3])]
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"Unknown setting '{path}'.{hint} Known keys in [{where or 'top level'}]: "
                f"{', '.join(sorted(defaults))}."
            )
        if not type_ok(defaults[key], value):
            raise ConfigError(
                f"Setting '{path}' must be {type(defaults[key]).__name__} "
                f"(like {defaults[key]!r}), got {value!r}."
            )
        check_finite(path, value, defaults[key])
        out[key] = _coerce(defaults[key], value)
    return out


def to_toml(config: dict[str, Any]) -> str:
    """Serialise a resolved configuration (tuples become arrays)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return tomli_w.dumps(plain(config))


def _frozen(value: Any) -> Any:
    """TOML arrays as tuples, so that settings built of them are hashable."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


@dataclass(frozen=True)
class RunConfig:
    """A resolved configuration (``config.resolve``'s result) and typed read access to it.

    ``raw`` is the plain data that config.toml holds and that layers are merged into; every
    reader goes through the properties.
    """

    raw: dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.raw["seed"])

    @property
    def task(self) -> str:
        return str(self.raw["task"])

    @property
    def device(self) -> str:
        return str(self.raw["device"])

    @property
    def method(self) -> Method:
        return Method(**self.raw["method"])

    @property
    def name(self) -> str:
        """The method as a run folder is named by default: ``SYNTH-DIAG-COUPLING``."""
        method = self.method
        return f"{method.synth}-{method.diag}-{method.coupling}"

    @property
    def data_spec(self) -> str:
        return str(self.raw["data"]["spec"])

    @property
    def data(self) -> DataSettings:
        """The ``[data]`` section as :class:`DataSettings` (the spec itself excluded)."""
        values = {f.name: self.raw["data"][f.name] for f in fields(DataSettings)}
        values["phantom"] = tuple(sorted((k, _frozen(v)) for k, v in dict(values["phantom"]).items()))
        return DataSettings(**values)

    @property
    def synthesis_subjects(self) -> str:
        return str(self.raw["data"]["synthesis_subjects"])

    @property
    def split(self) -> SplitSettings:
        return SplitSettings(**self.raw["split"])

    @property
    def train(self) -> TrainSettings:
        return TrainSettings(**self.raw["train"])

    @property
    def augment(self) -> AugmentSettings:
        return AugmentSettings(**self.raw["augment"])

    @property
    def precision(self) -> PrecisionSettings:
        return PrecisionSettings(**self.raw["precision"])

    @property
    def evaluate(self) -> EvaluateSettings:
        return EvaluateSettings(**self.raw["evaluate"])

    @property
    def seeds(self) -> SeedSettings:
        return SeedSettings(**self.raw["seeds"])

    def seed_of(self, source: str) -> int:
        """The seed of ``source`` (a :class:`SeedSettings` field): its own, or the run's."""
        given = int(getattr(self.seeds, source))
        return self.seed if given == FROM_RUN_SEED else given

    @property
    def track(self) -> dict[str, dict[str, Any]]:
        """The selected trackers' settings by name (empty: the run is tracked nowhere)."""
        return dict(self.raw.get(TRACK, {}))

    def plugin(self, section: str) -> tuple[str, dict[str, Any]]:
        """The chosen component's name and settings for ``synth``, ``diag`` or ``coupling``."""
        name = self.raw["method"][section]
        return name, dict(self.raw[section].get(name, {}))

    def setting(self, key: str) -> Any:
        """The value of the dotted ``key`` (``coupling.joint.w_voxel``); ``None`` where there is none."""
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def with_data(self, **values: Any) -> RunConfig:
        """This configuration with ``[data]`` settings replaced (values already checked)."""
        raw = copy.deepcopy(self.raw)
        raw["data"].update(values)
        return RunConfig(raw)

    def toml(self) -> str:
        return to_toml(self.raw)
