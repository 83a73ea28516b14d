"""A suite folder small enough to commit that still re-renders: ``cdsf-bench export``.

A suite's output holds checkpoints and synthetic NIfTI (megabytes per run) that no reader
of the results needs, so committing it whole is out of the question; committing only the
report leaves a folder that ``report`` cannot regenerate, and numbers nobody can recheck.
The export keeps exactly what ``report`` and ``regress`` read: the suite-level files, and
per finished run its metrics.json (``regress`` on a run folder) and the files the report
reads (:func:`cdsf_bench.bench.inputs.report_inputs`: predictions, environment, the
montage it shows). ``report`` on the export writes report.md byte for byte as the source.

The export's README.md (the source's, else a new one) gets a machine section generated from
the runs' environment.json (:mod:`cdsf_bench.bench.provenance`), rewritten by every export,
so the machine, precision and threads a README states are the ones the runs recorded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cdsf_bench.bench.inputs import report_inputs
from cdsf_bench.bench.provenance import README, machine_section, write_machine_section
from cdsf_bench.bench.table import RESULTS_FILE, SUITE_FILE, load_results
from cdsf_bench.errors import InputError
from cdsf_bench.run_folder import RunFolder

#: suite-level files kept when present: the tables, the record of the suite, the report
SUITE_FILES = (
    RESULTS_FILE,
    SUITE_FILE,
    "comparisons.csv",
    "checks.csv",
    "answers.csv",
    "interpret.csv",
    "report.md",
    "report.html",
    "suite.toml",
    README,
)
#: the report's own figures (ROC, strip plots, montages it copied)
FIGURES = "figures"


def export_results(source: Path, dest: Path) -> list[str]:
    """Copy what the report of ``source`` reads into ``dest`` and write its README's machine
    section; return the files, relative.

    ``dest`` must not exist or be empty: an export is a fresh record, never merged into
    another. ``source`` is checked first (results.csv, every finished run's predictions),
    so nothing is written for a folder that could not be re-rendered anyway.
    """
    source, dest = Path(source), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest} exists and is not an empty folder; export into a new folder.")
    if dest.resolve() == source.resolve():
        raise InputError(f"{dest} is the suite folder itself; export into a new folder.")
    runs = report_inputs(source)  # refuses a folder lacking what the report needs
    done = load_results(source).query("status == 'done'")
    finished = [RunFolder(Path(run)).metrics_path for run in done["run_folder"]]
    metrics = [path.as_posix() for path in finished if (source / path).is_file()]
    suite = [name for name in SUITE_FILES if (source / name).is_file()]
    figures = sorted(
        path.relative_to(source).as_posix() for path in (source / FIGURES).glob("*.png") if path.is_file()
    )
    copied = list(dict.fromkeys([*suite, *figures, *metrics, *runs]))
    for name in copied:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
    write_machine_section(dest / README, machine_section(source, done))
    return list(dict.fromkeys([*copied, README]))
