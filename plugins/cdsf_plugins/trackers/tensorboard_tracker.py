"""The TensorBoard tracker: event files written by torch's ``SummaryWriter``.

A run's events go to ``<run folder>/<subfolder>``; a suite's to its own folder's, so
``tensorboard --logdir SUITE_FOLDER`` shows the suite and every run in it. Parameters and
tags are one text summary each (a markdown table), epochs are scalar steps, test metrics
are scalars at the last epoch's step and the figures are images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.image import imread

from cdsf_plugins.trackers._extra import missing

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError as error:  # torch raises this when the tensorboard package is missing
    raise missing("tensorboard", "tensorboard", error) from None


def _table(values: dict[str, Any]) -> str:
    rows = "\n".join(f"| {key} | {str(value).replace('|', '/')} |" for key, value in values.items())
    return f"| key | value |\n| --- | --- |\n{rows}"


class TensorBoardTracker:
    def __init__(self, subfolder: str = "tensorboard") -> None:
        self.subfolder = subfolder
        self._writers: list[tuple[SummaryWriter, list[int]]] = []  # (writer, [last step])

    def start(
        self, run_name: str, params: dict[str, Any], tags: dict[str, str], parent: str | None, folder: Path
    ) -> str:
        logdir = Path(folder) / self.subfolder
        writer = SummaryWriter(log_dir=str(logdir))
        writer.add_text("run", _table({"name": run_name, **({"parent": parent} if parent else {})}))
        writer.add_text("params", _table(params))
        writer.add_text("tags", _table(tags))
        self._writers.append((writer, [0]))
        return str(logdir)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        writer, last = self._writers[-1]
        for key, value in metrics.items():
            writer.add_scalar(key, value, epoch)
        last[0] = epoch
        writer.flush()

    def finish(self, metrics: dict[str, float], artefacts: list[Path], folder: Path, status: str) -> None:
        writer, last = self._writers.pop()
        try:
            for key, value in metrics.items():
                writer.add_scalar(key, value, last[0])
            for path in artefacts:
                if Path(path).suffix.lower() == ".png":
                    image = imread(str(path))  # float RGBA in [0, 1], height x width x 4
                    writer.add_image(f"figures/{Path(path).stem}", image, last[0], dataformats="HWC")
            writer.add_text("status", status)
        finally:
            writer.close()
