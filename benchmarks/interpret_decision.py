"""Apply benchmarks/suites/interpret.toml's decision rule to an interpreted suite folder.

The rule, written in the suite before its runs: a method "looks where the disease was
planted" on a channel when the one-sided 95% lower bound of its mean in-region share over
the test subjects (a t interval) exceeds the random map's share. Every subject of every
run's scores.csv counts, except that a map with no positive attribution has no share (it is
counted in ``undefined``, not dropped silently).

    python benchmarks/interpret_decision.py SUITE_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from scipy import stats


def decisions(folder: Path) -> pd.DataFrame:
    """One row per run, attribution and channel: mean share, its lower bound, the random share."""
    rows = []
    for scores_file in sorted((folder / "interpret").glob("**/scores.csv")):
        scores = pd.read_csv(scores_file)
        for (attribution, channel, truth), group in scores.groupby(["attribution", "channel", "truth"]):
            all_shares = group["share"].to_numpy(float)
            share = all_shares[~pd.isna(all_shares)]
            n = len(share)
            lower = share.mean() - stats.t.ppf(0.95, n - 1) * share.std(ddof=1) / n**0.5
            random_share = float(group["random_share"].mean())
            rows.append(
                {
                    "run": scores_file.parent.name,
                    "attribution": attribution,
                    "channel": channel,
                    "truth": truth,
                    "n": n,
                    "undefined": len(all_shares) - n,
                    "share": share.mean(),
                    "lower_95": lower,
                    "random_share": random_share,
                    "hit_rate": group["hit"].mean(),
                    "random_hit_rate": group["random_hit"].mean(),
                    "looks_there": bool(lower > random_share),
                }
            )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    table = decisions(Path(sys.argv[1]))
    print(table.round(3).to_csv(index=False) if len(table) else "no scores.csv found", end="")
