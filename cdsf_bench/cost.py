"""What a run cost to compute: wall time, the device it ran on and, optionally, energy and CO2.

Every run folder records its wall time (timing.json) and its device (environment.json:
``device``, the CPU's ``cpu_model`` and, on CUDA, the ``gpu`` name); :func:`device_name`
reads the one name a cost table shows. With ``evaluate.carbon`` a run is also measured by
CodeCarbon (the ``carbon`` extra), offline: its ``OfflineEmissionsTracker`` estimates the
energy of CPU, GPU and RAM from their power (RAPL, NVML or CodeCarbon's tables) and turns
it into CO2-equivalent with the electricity mix of ``evaluate.carbon_country`` (ISO 3166-1
alpha-3, e.g. "DEU", "FRA", "USA"), without any network call. The tracker runs in
"process" mode, so on a machine other jobs share it counts this process's share of the CPU,
and it writes no file of its own (``output_methods=[]``): the run folder's energy.json holds
:func:`energy_record`'s fields, which the suite report sums per method and in total.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Protocol

from cdsf_bench.errors import ConfigError

CARBON_EXTRA = "pip install 'cdsf-bench[carbon]'"
#: energy.json's measured fields: kWh drawn and kg CO2-equivalent emitted, over the run
ENERGY_KEYS = ("energy_kwh", "co2eq_kg")
#: CodeCarbon's attribution of a shared machine's power: this process's share
TRACKING_MODE = "process"


class EmissionsTracker(Protocol):
    """What cdsf-bench uses of a CodeCarbon tracker: start, stop, and the final record
    (``final_emissions_data``: ``energy_consumed`` in kWh, ``emissions`` in kg CO2eq,
    ``duration`` in seconds), set by ``stop``."""

    final_emissions_data: Any

    def start(self) -> None: ...

    def stop(self) -> float | None: ...


#: makes a started-to-be tracker for a country's ISO code (the seam tests replace)
TrackerFactory = Callable[[str], EmissionsTracker]


def require_codecarbon(country: str) -> None:
    """Refuse ``evaluate.carbon`` without CodeCarbon installed or without a country."""
    if not country:
        raise ConfigError(
            "evaluate.carbon estimates CO2 from a country's electricity mix: name the country where "
            'the run computes with evaluate.carbon_country (ISO 3166-1 alpha-3, e.g. "DEU", "USA").'
        )
    try:
        import codecarbon  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"evaluate.carbon measures energy with CodeCarbon, which is not installed; {CARBON_EXTRA}, "
            "or set evaluate.carbon = false."
        ) from None


def codecarbon_tracker(country: str) -> EmissionsTracker:
    """CodeCarbon's offline tracker for ``country``: no network, no file, errors only in the log."""
    from codecarbon import OfflineEmissionsTracker

    tracker: EmissionsTracker = OfflineEmissionsTracker(
        country_iso_code=country,
        project_name="cdsf-bench",
        output_methods=[],
        log_level="error",
        tracking_mode=TRACKING_MODE,
    )
    return tracker


def energy_record(tracker: EmissionsTracker, country: str) -> dict[str, Any]:
    """energy.json: the stopped ``tracker``'s energy, CO2-equivalent and duration."""
    data = tracker.final_emissions_data
    try:
        version: str | None = metadata.version("codecarbon")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "energy_kwh": float(data.energy_consumed),
        "co2eq_kg": float(data.emissions),
        "duration_seconds": float(data.duration),
        "country_iso_code": country,
        "tracking_mode": TRACKING_MODE,
        "codecarbon": version,
    }


class EnergyMeter:
    """A run's energy measurement: :meth:`record` stops it and returns energy.json's record.

    Without a tracker (``evaluate.carbon`` off, or a process that writes nothing) it records
    nothing and :meth:`record` returns None.
    """

    def __init__(self, tracker: EmissionsTracker | None, country: str) -> None:
        self.tracker = tracker
        self.country = country
        self.stopped = False

    def record(self) -> dict[str, Any] | None:
        if self.tracker is None:
            return None
        self.stop()
        return energy_record(self.tracker, self.country)

    def stop(self) -> None:
        if self.tracker is not None and not self.stopped:
            self.stopped = True
            self.tracker.stop()


@contextmanager
def energy_meter(
    carbon: bool, country: str, *, measures: bool = True, make_tracker: TrackerFactory | None = None
) -> Iterator[EnergyMeter]:
    """Measure the enclosed work when ``carbon`` asks for it (and this process ``measures``).

    The tracker is stopped when the block ends, also when it raises; ``make_tracker``
    defaults to :func:`codecarbon_tracker`.
    """
    tracker = None
    if carbon and measures:
        tracker = (make_tracker or codecarbon_tracker)(country)
        tracker.start()
    meter = EnergyMeter(tracker, country)
    try:
        yield meter
    finally:
        meter.stop()


def device_name(environment: dict[str, Any]) -> str:
    """The device a run computed on, by name: the GPU's on CUDA, else the CPU model."""
    device = str(environment.get("device") or "unknown")
    if environment.get("gpu"):
        return f"{environment['gpu']} ({device})"
    model = environment.get("cpu_model") or environment.get("processor")
    return f"{model} ({device})" if model else device
