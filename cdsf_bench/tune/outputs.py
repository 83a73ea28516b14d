"""What a study leaves in its folder, rewritten from its storage after every trial.

- ``trials.csv``: one row per trial: number, state, the metric's value, every searched
  setting, epochs trained, seconds, the worker and a note (defaults, pruned, failed, killed
  and re-run as trial N, killed too often and failed for good, resumed);
- ``best.toml``: the best complete trial's full configuration, which ``cdsf-bench run
  --config best.toml`` trains again and then tests (the only step that touches the test split);
- ``figures/history.png``: the optimisation history;
- ``summary.json``: the budget, the counts, the best trial and its settings, the defaults' value.

Every writer reads the storage, so any worker of a shared study may write them; each file
is written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cdsf_bench.figures import save_figure
from cdsf_bench.interfaces import Choice
from cdsf_bench.results import json_safe, write_csv, write_json, write_text
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.tune.plan import StudyPlan
from cdsf_bench.tune.space import label, plain
from cdsf_bench.tune.study import MAX_RETRIES, lost

if TYPE_CHECKING:
    import optuna

    from cdsf_bench.tune.study import StudyFolder


def decoded(plan: StudyPlan, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings as the configuration holds them (a choice's JSON label read back)."""
    out = {}
    for dim in plan.space:
        if dim.key not in params:
            continue
        value = params[dim.key]
        if isinstance(dim.param, Choice):
            value = next((plain(v) for v in dim.param.values if label(v) == value), value)
        out[dim.key] = value
    return out


def trials_frame(study: optuna.Study, plan: StudyPlan) -> pd.DataFrame:
    """The trials table (trials.csv)."""
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for trial in trials:
        note = str(trial.user_attrs.get("note", ""))
        if trial.number in rerun:
            note = f"killed; re-run as trial {rerun[trial.number]}" + (f" ({note})" if note else "")
        elif trial.state.name == "FAIL" and not trial.user_attrs.get("counted") and not lost(trial):
            note = f"killed {MAX_RETRIES + 1} times; failed for good" + (f" ({note})" if note else "")
        elif trial.state.name == "FAIL" and not note:
            note = "killed"
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                # Optuna gives a pruned trial its last epoch's value; only a complete trial has a score
                plan.metric: trial.value if trial.state.name == "COMPLETE" else None,
                **{
                    key: json.dumps(v) if isinstance(v, list) else v
                    for key, v in decoded(plan, trial.params).items()
                },
                "epochs": trial.user_attrs.get("epochs"),
                "seconds": trial.user_attrs.get("seconds"),
                "worker": trial.user_attrs.get("worker", ""),
                "folder": f"trials/{int(trial.user_attrs.get('folder_of', trial.number)):04d}",
                "note": note,
            }
        )
    columns = [
        "trial",
        "state",
        plan.metric,
        *(dim.key for dim in plan.space),
        "epochs",
        "seconds",
        "worker",
        "folder",
        "note",
    ]
    return pd.DataFrame(rows, columns=columns)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial, or None before one completes."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if complete else None


def history_figure(frame: pd.DataFrame, plan: StudyPlan, path: Path, defaults: list[int]) -> Path:
    """Each complete trial's validation value, the best so far, the defaults' trial, and where
    trials were pruned or failed."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(6.0, 3.8))
    values = frame[plan.metric].astype(float)
    complete = frame["state"] == "complete"
    axis.scatter(frame.loc[complete, "trial"], values[complete], s=22, label="complete trial", zorder=3)
    shown = complete & frame["trial"].isin(defaults)
    if shown.any():
        axis.scatter(
            frame.loc[shown, "trial"],
            values[shown],
            s=90,
            marker="*",
            color="tab:green",
            label="defaults",
            zorder=4,
        )
    if complete.any():
        running = values.where(complete)
        best = running.cummax() if plan.direction == "maximize" else running.cummin()
        axis.step(frame["trial"], best.ffill(), where="post", color="tab:red", label="best so far")
    marks = {"pruned": "pruned", "failed": "failed"}
    counts = ", ".join(
        f"{int((frame['state'] == s).sum())} {name}"
        for s, name in marks.items()
        if (frame["state"] == s).any()
    )
    for trial in frame.loc[frame["state"].isin(marks), "trial"]:
        axis.axvline(trial, color="grey", linewidth=0.6, linestyle=":", zorder=1)
    better = "higher" if plan.direction == "maximize" else "lower"
    axis.set(
        xlabel="trial",
        ylabel=f"validation {plan.metric} ({better} is better)",
        title=f"{plan.method}: optimisation history" + (f" ({counts}: dotted)" if counts else ""),
    )
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(loc="best", fontsize=8)
    return save_figure(figure, path)


def summary(
    study: optuna.Study, plan: StudyPlan, folder: StudyFolder, budget: int, counts: dict[str, int]
) -> dict:
    """The study in one JSON object (summary.json, ``tune --json``)."""
    best = best_trial(study)
    defaults = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("defaults")]
    defaults_value = defaults[0].value if defaults and defaults[0].state.name == "COMPLETE" else None
    return json_safe(
        {
            "study": plan.name,
            "hash": plan.hash,
            "method": dict(plan.base.raw["method"]),
            "metric": plan.metric,
            "direction": plan.direction,
            "budget": budget,
            "trials": counts,
            "space": [dim.describe() for dim in plan.space],
            "best": None
            if best is None
            else {
                "trial": best.number,
                "value": best.value,
                "settings": decoded(plan, best.params),
                "config": folder.best_config.name,
            },
            "defaults_value": defaults_value,
            "out": str(folder.path),
        }
    )


def write_outputs(
    study: optuna.Study,
    plan: StudyPlan,
    folder: StudyFolder,
    budget: int,
    counts: dict[str, int],
    *,
    figure: bool,
) -> dict:
    """Rewrite trials.csv, best.toml, summary.json and (with ``figure``) the figure; return the summary.

    The tables follow every trial; the figure, a second's drawing, is drawn when a worker stops.
    """
    frame = trials_frame(study, plan)
    write_csv(folder.trials_table, frame)
    if figure:
        defaults = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("defaults")]
        history_figure(frame, plan, folder.figure, defaults)
    best = best_trial(study)
    if best is not None:
        source = RunFolder(folder.trial(int(best.user_attrs.get("folder_of", best.number))))
        header = (
            f"# Best trial of study {plan.name}: trial {best.number}, validation {plan.metric} "
            f"{best.value:.4f}\n# (trained on the training split, scored on validation; the test split "
            "was not predicted).\n# Train it again and test it once: cdsf-bench run --config best.toml\n"
        )
        write_text(folder.best_config, header + source.config_text())
    record = summary(study, plan, folder, budget, counts)
    write_json(folder.summary, record)
    return record


def value_text(value: float | None, metric: str) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{metric} {value:.4f}"
