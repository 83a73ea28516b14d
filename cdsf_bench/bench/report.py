"""The suite report: per-method summaries, paired tests against a reference, figures.

Read from a suite folder (``results.csv``, ``suite.json`` and the run folders), written to
``report.md`` (figures linked from ``figures/``), ``report.html`` (one file, figures embedded)
and ``comparisons.csv`` (every paired test, one row per method and replicate). Each run's
precision, threads, torch and device head the report, with a warning where the compared runs
differ in them (:mod:`cdsf_bench.bench.provenance`).

Pairing: a method is compared with the reference within each replicate (the same task and
seed or fold, hence the same split) on the test subjects both predicted, matched by
participant. AUCs are compared by DeLong's test, balanced accuracies by a paired bootstrap
over subjects; over replicates the mean difference gets a Student t interval.

A suite with ``[scenarios]`` is reported scenario by scenario; a suite with ``[[checks]]``
(expected findings written before it ran) gets a pass / fail table of them, also written
to ``checks.csv``; a suite with ``test_data`` gets an external-validation section per task
(:mod:`cdsf_bench.bench.external`). Where the runs recorded their split sizes, the report
also answers each comparison (:mod:`cdsf_bench.bench.answers`: the design's t-test, Holm,
the minimal detectable difference and a verdict; ``answers.csv``) and the intervals follow
the design; a folder without split sizes gets no answers, plain t intervals in its tables
and its interval checks not evaluated. A tuned
suite's report states the budget and each method's chosen settings
(:mod:`cdsf_bench.bench.tuning_report`). A suite interpreted by ``cdsf-bench interpret``
(its ``interpret.csv``) gets one table per attribution method of where the diagnosers look
(:mod:`cdsf_bench.interpret.suite`). Every report ends with the runs' compute cost
(:mod:`cdsf_bench.bench.cost_report`). What the report reads, and in which order, is
:mod:`cdsf_bench.bench.inputs`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table as RichTable

from cdsf_bench.bench.answers import (
    Design,
    answers,
    answers_blocks,
    answers_figure,
    answers_frame,
    design_of,
)
from cdsf_bench.bench.checks import (
    CheckOutcome,
    checks_blocks,
    checks_frame,
    checks_from_canonical,
    evaluate_checks,
)
from cdsf_bench.bench.cost_report import cost_blocks
from cdsf_bench.bench.external import EXTERNAL, external_runs, shift_blocks
from cdsf_bench.bench.figures import pooled_reliability, pooled_roc, strip_plot, synthesis_bars
from cdsf_bench.bench.header import header_blocks
from cdsf_bench.bench.inputs import (
    groups,
    in_group,
    method_order,
    montage_path,
    montage_runs,
    require_run_files,
    synthesising_methods,
)
from cdsf_bench.bench.provenance import machine_blocks
from cdsf_bench.bench.render import Block, Figure, Heading, Paragraph, Table, to_html, to_markdown
from cdsf_bench.bench.stats import (
    ALPHA,
    BOOTSTRAP_REPLICATES,
    compare_replicate,
    interval_text,
    mean_sd,
    replicate_of,
)
from cdsf_bench.bench.table import load_results, suite_record
from cdsf_bench.bench.tuning_report import tuning_blocks
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Method
from cdsf_bench.interpret.suite import interpretation_blocks
from cdsf_bench.metric_conventions import CONVENTION_KEYS
from cdsf_bench.metrics import CALIBRATION_KEYS, DISEASE_SYNTHESIS_KEYS, SUBGROUP_KEYS, SYNTHESIS_KEYS
from cdsf_bench.progress import console
from cdsf_bench.results import write_csv, write_text
from cdsf_bench.run_folder import RunFolder

#: diagnosis metrics summarised per method (per-run AUC intervals stay in results.csv)
SUMMARY_METRICS = ("auc", "bacc", "acc", "sen", "spe", "f1", "mcc")
FORMATS = ("md", "html")
TESTS_NOTE = (
    "AUC differences: DeLong's test for two correlated ROC curves (DeLong et al., Biometrics 1988), "
    "two-sided, one p-value per replicate. Balanced-accuracy differences: paired bootstrap over test "
    f"subjects ({BOOTSTRAP_REPLICATES} replicates resampled within each class, seeded by the run seed), "
    "two-sided, one p-value per replicate. Across replicates: mean difference with a 95% Student t "
    "interval (none for a single replicate). Differences are method minus reference; no correction "
    "for multiple comparisons is applied. A dash: the test cannot be computed (DeLong needs two test "
    "subjects of each class and a non-zero variance unless the AUCs are equal)."
)

#: the note under the paired comparisons of a folder with a design (see "Answers")
DESIGN_TESTS_NOTE = (
    TESTS_NOTE.split(" Across replicates:")[0]
    + " Across replicates: mean difference with the 95% interval of the design's t-test (see "
    "Answers, where the p-values are also Holm-adjusted over the suite's comparisons). Differences "
    "are method minus reference. A dash: the test cannot be computed (DeLong needs two test subjects "
    "of each class and a non-zero variance unless the AUCs are equal)."
)
CALIBRATION_NOTE = (
    "Brier score: mean squared error of the predicted probability (scikit-learn). ECE: expected "
    "calibration error of the positive-class probability over 10 equal-width bins of [0, 1] (the "
    "bins' share of subjects times |fraction positive - mean probability|, summed). With / without "
    "PET: AUC and balanced accuracy of the test subjects whose PET was acquired / not acquired (where "
    "imputation methods differ); a dash where a subgroup lacks a class or a method predicts none of it."
)

DISEASE_NOTE = (
    "Regional uptake in the posterior cingulate, precuneus and angular gyri (spheres around their "
    "MNI centres), on the [0, 1] scale (times data.pet_suvr_max for SUVR). roi_mae: mean absolute "
    "error over subjects and regions; roi_r: Pearson r across test subjects of the synthetic and "
    "real mean over the regions; pet_specific_r: partial correlation (residualisation) of the "
    "synthetic regions' uptake loss with the metabolic severity given the structural one, the PET "
    "information beyond MRI's structural severity that the generator recovered; pet_specific_r_real: "
    "the same for the real PET, the ceiling (phantom only)."
)

CONVENTIONS_NOTE = (
    "PSNR, SSIM and MAE: cdsf-bench's own, inside the brain mask on the [0, 1] scale (PSNR with "
    "peak 1, 3D SSIM). The peers' conventions (docs/benchmark.md, \"Synthesis metrics in the "
    "peers' conventions\"): psnr_pm1, PSNR of the whole grid on [-1, 1] with data range 2; "
    "psnr_slice255, the mean over axial slices with brain of each slice's PSNR on 0-255 (data "
    "range 255); ms_ssim, MONAI's 3D MS-SSIM of the whole grid on [0, 1] (Gaussian kernel 5, "
    "three scales)."
)


def choose_reference(results: pd.DataFrame, requested: str | None, default: Method | None = None) -> str:
    """The requested method, else the plugins' default method, else the first method.

    ``default`` is ``Registry.method_defaults().method`` (the core names no method itself); it
    is matched by coupling and synthesiser: the first method of the results with both.
    """
    methods = method_order(results)
    if requested is not None:
        if requested not in methods:
            raise InputError(
                f"--reference '{requested}' is not a method of these results: {', '.join(methods)}."
            )
        return requested
    if default is None:
        return methods[0]
    matching = results[(results["coupling"] == default.coupling) & (results["synth"] == default.synth)]
    return matching["method"].iloc[0] if len(matching) else methods[0]


def comparisons(folder: Path, done: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every method against the reference, replicate by replicate (finished runs only)."""
    done = done.assign(replicate=done["run_folder"].map(replicate_of))
    references = done[done["method"] == reference].set_index("replicate")
    rows = [
        compare_replicate(folder, run, references.loc[run["replicate"]])
        for _, run in done.iterrows()
        if run["method"] != reference and run["replicate"] in references.index
    ]
    return pd.DataFrame(rows)


def _span(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def _p_values(part: pd.DataFrame, column: str) -> str:
    return "; ".join(
        f"{r}: {p:.3g}" if np.isfinite(p) else f"{r}: -"
        for r, p in zip(part["replicate"], part[column], strict=True)
    )


def _summary_tables(done: pd.DataFrame, methods: list[str]) -> list[Block]:
    rows = []
    for method in methods:
        part = done[done["method"] == method]
        rows.append((method, str(len(part)), *(mean_sd(part[m]) for m in SUMMARY_METRICS)))
    blocks: list[Block] = [
        Heading(3, "Diagnosis (test split, mean ± sd over replicates)"),
        Table(("method", "runs", *(m.upper() for m in SUMMARY_METRICS)), tuple(rows)),
    ]
    synthesising = synthesising_methods(done, methods)
    if synthesising:
        peers = [k for k in CONVENTION_KEYS if k in done.columns and done[k].notna().any()]
        keys = (*SYNTHESIS_KEYS, *peers)
        rows = [(m, *(mean_sd(done.loc[done["method"] == m, k], 4) for k in keys)) for m in synthesising]
        blocks += [
            Heading(3, "Synthesis (PET on the [0, 1] scale, inside the brain mask; mean ± sd)"),
            Table(("method", *(k.upper() for k in SYNTHESIS_KEYS), *peers), tuple(rows)),
        ]
        if peers:
            blocks.append(Paragraph(CONVENTIONS_NOTE))
    calibration = [k for k in (*CALIBRATION_KEYS, *SUBGROUP_KEYS) if k in done.columns]
    if calibration and done[calibration].notna().any().any():  # a section only where recorded
        rows = [(m, *(mean_sd(done.loc[done["method"] == m, k]) for k in calibration)) for m in methods]
        blocks += [
            Heading(3, "Calibration and PET subgroups (test split, mean ± sd over replicates)"),
            Table(("method", *calibration), tuple(rows)),
            Paragraph(CALIBRATION_NOTE),
        ]
    disease = [k for k in DISEASE_SYNTHESIS_KEYS if k in done.columns]
    specific = [m for m in synthesising if done.loc[done["method"] == m, disease].notna().any().any()]
    if specific:
        rows = [(m, *(mean_sd(done.loc[done["method"] == m, k], 3) for k in disease)) for m in specific]
        blocks += [
            Heading(3, "Disease-specific synthesis (hypometabolism regions; mean ± sd)"),
            Table(("method", *disease), tuple(rows)),
            Paragraph(DISEASE_NOTE),
        ]
    return blocks


def _comparison_table(
    paired: pd.DataFrame, methods: list[str], reference: str, design: Design | None
) -> list[Block]:
    ratio = design.test_train_ratio if design else 0.0
    rows = []
    for method in methods:
        part = paired[paired["method"] == method] if len(paired) else paired
        if method == reference or part.empty:
            continue
        rows.append(
            (
                method,
                str(len(part)),
                _span(part["n_paired"]),
                interval_text(part["auc_diff"], ratio),
                _p_values(part, "delong_p"),
                interval_text(part["bacc_diff"], ratio),
                _p_values(part, "bacc_p"),
            )
        )
    if not rows:
        return [Paragraph("No paired comparisons: the reference has no finished run to pair with.")]
    columns = (
        "method",
        "replicates",
        "subjects paired",
        f"ΔAUC vs {reference} (mean [95% t-CI])",
        "DeLong p per replicate",
        f"ΔBACC vs {reference} (mean [95% t-CI])",
        "bootstrap p per replicate",
    )
    return [
        Heading(3, f"Paired comparisons against {reference}"),
        Table(columns, tuple(rows)),
        Paragraph(DESIGN_TESTS_NOTE if design else TESTS_NOTE),
    ]


def _figures(folder: Path, task: str, done: pd.DataFrame, methods: list[str]) -> list[Block]:
    figures = folder / "figures"
    blocks: list[Block] = []
    curves = {}
    for method in methods:
        runs = done[done["method"] == method]["run_folder"]
        if len(runs):
            pooled = pd.concat([RunFolder(folder / r).predictions() for r in runs])
            curves[method] = (pooled["label"].to_numpy(), pooled["probability"].to_numpy())
    pooled_roc(curves, figures / f"{task}_roc.png", task)
    blocks.append(
        Figure(f"figures/{task}_roc.png", f"{task}: ROC curves, test subjects of all replicates pooled")
    )
    pooled_reliability(curves, figures / f"{task}_reliability.png", task)
    blocks.append(
        Figure(
            f"figures/{task}_reliability.png",
            f"{task}: reliability diagram, test subjects of all replicates pooled",
        )
    )
    strip_plot(done, methods, figures / f"{task}_strip.png", task)
    blocks.append(
        Figure(f"figures/{task}_strip.png", f"{task}: AUC and balanced accuracy per replicate (bar: mean)")
    )
    synthesising = synthesising_methods(done, methods)
    if synthesising:
        synthesis_bars(
            done[done["method"].isin(synthesising)], synthesising, figures / f"{task}_synthesis.png", task
        )
        blocks.append(
            Figure(f"figures/{task}_synthesis.png", f"{task}: synthesis quality, mean ± sd over replicates")
        )
    for method, first in montage_runs(done, synthesising):
        montage = montage_path(folder / first["run_folder"])
        if montage.exists():
            slug = Path(first["run_folder"]).name
            target = figures / f"{task}_montage_{slug}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(montage, target)
            blocks.append(
                Figure(
                    f"figures/{target.name}",
                    f"{task}: {method}, MRI, real PET, synthetic PET and error on test subjects "
                    f"({Path(first['run_folder']).parent.name})",
                )
            )
    return blocks


def build_report(
    folder: Path, reference: str | None = None, default: Method | None = None
) -> tuple[list[Block], pd.DataFrame, str, list[CheckOutcome], pd.DataFrame]:
    """The report's blocks, the paired comparisons, the reference, the checks' outcomes and
    the answers (empty for a folder without a design).

    Draws the figures on the way.
    """
    results = load_results(folder)
    done = results[results["status"] == "done"]
    require_run_files(folder, done)
    reference = choose_reference(results, reference, default)
    blocks = header_blocks(folder, results, done, reference)
    blocks += machine_blocks(folder, done)  # warns when the compared runs differ in precision
    suite = suite_record(Path(folder)).get("suite", {})
    designs: dict[tuple[str, str], Design] = {}
    paired_of: dict[tuple[str, str], pd.DataFrame] = {}
    for scenario, task in groups(results):
        task_done = in_group(done, scenario, task)
        if len(task_done):
            paired_of[scenario, task] = comparisons(folder, task_done, reference)
            design = design_of(suite, task_done)
            if design is not None:
                designs[scenario, task] = design
    ratios = {group: design.test_train_ratio for group, design in designs.items()}
    alpha = suite.get("alpha", ALPHA)
    outcomes = evaluate_checks(folder, results, checks_from_canonical(suite), ratios, alpha)
    blocks += checks_blocks(outcomes, alpha)
    all_pairs = [p.assign(scenario=s) if s and len(p) else p for (s, _), p in paired_of.items()]
    pairs = pd.concat(all_pairs, ignore_index=True) if all_pairs else pd.DataFrame()
    found = answers(pairs, designs, alpha)
    blocks += answers_blocks(found, designs, reference) + answers_figure(found, Path(folder), reference)
    blocks += tuning_blocks(folder, results, suite.get("tune"))
    for scenario, task in groups(results):
        task_done = in_group(done, scenario, task)
        methods = method_order(in_group(results, scenario, task))
        blocks.append(Heading(2, f"Scenario {scenario}, task {task}" if scenario else f"Task {task}"))
        if task_done.empty:
            blocks.append(Paragraph("No run of this task finished."))
            continue
        design = designs.get((scenario, task))
        blocks += _summary_tables(task_done, methods)
        blocks += _comparison_table(paired_of[scenario, task], methods, reference, design)
        label = f"{scenario}_{task}" if scenario else task
        blocks += _figures(folder, label, task_done, methods)
        external = external_runs(folder, scenario, task)
        if external is not None:  # the suite's test_data: the same tables on the external cohort
            blocks += shift_blocks(folder, task_done, external, methods, label, task)
            if len(external):
                paired = comparisons(folder / EXTERNAL, external, reference)
                # one fixed external cohort: no resampling correction to the t-test
                blocks += _comparison_table(paired, methods, reference, None)
    blocks += interpretation_blocks(folder)  # present once 'cdsf-bench interpret FOLDER' ran
    blocks += cost_blocks(folder, done)
    unfinished = results[results["status"] != "done"]
    if len(unfinished):
        blocks += [
            Heading(2, "Runs that did not finish"),
            Table(
                ("run", "status", "error"),
                tuple(
                    (r["run_folder"], r["status"], str(r["error"] or "")) for _, r in unfinished.iterrows()
                ),
            ),
        ]
    return blocks, pairs, reference, outcomes, answers_frame(found, reference)


def write_report(
    folder: Path,
    formats: tuple[str, ...] = FORMATS,
    reference: str | None = None,
    default: Method | None = None,
) -> list[Path]:
    """Write report.md and/or report.html and comparisons.csv into ``folder``; return the paths.

    The reference is ``reference``, else chosen by :func:`choose_reference` from ``default``.
    """
    folder = Path(folder)
    blocks, pairs, reference, outcomes, answered = build_report(folder, reference, default)
    written = [write_csv(folder / "comparisons.csv", pairs)]
    if outcomes:
        written.append(write_csv(folder / "checks.csv", checks_frame(outcomes)))
    if len(answered):
        written.append(write_csv(folder / "answers.csv", answered))
    title = blocks[0].text if isinstance(blocks[0], Heading) else "cdsf-bench report"
    if "md" in formats:
        written.append(write_text(folder / "report.md", to_markdown(blocks)))
    if "html" in formats:
        written.append(write_text(folder / "report.html", to_html(blocks, folder, title)))
    return written


def print_summary(results: pd.DataFrame) -> None:
    """The report's per-method mean ± sd tables, on the console."""
    if "scenario" not in results.columns:
        results = results.assign(scenario="")
    done = results[results["status"] == "done"]
    for scenario, task in groups(results):
        methods = method_order(in_group(results, scenario, task))
        label = f"{scenario} {task}" if scenario else task
        title = label
        for block in _summary_tables(in_group(done, scenario, task), methods):
            if isinstance(block, Heading):
                title = f"{label}: {block.text}"
            elif isinstance(block, Table):
                table = RichTable(title=title)
                for index, column in enumerate(block.columns):
                    table.add_column(column, justify="left" if index == 0 else "right", overflow="fold")
                for row in block.rows:
                    table.add_row(*row)
                console.print(table)
