"""Sizing a suite from a finished one: how many replicates and test subjects a target needs.

A paired AUC difference measured on one replicate varies for two reasons: the test subjects
drawn (DeLong's variance of the difference, which falls as 1 / n with n test subjects) and
the training itself (the cohort, the split, the initialisation: a variance tau^2 that no
test set removes). Over J independent replicates the variance of one replicate's difference
is

    sigma^2(n) = tau^2 + c / n,        c = mean over replicates of (DeLong variance x n_j),

and the half-width of the paired 95% interval of the mean is t(0.975, J - 1) sigma(n) / sqrt(J).
From a finished suite folder, c is the DeLong variances times their test sizes and tau^2 is
the sample variance of the replicate differences minus their mean DeLong variance (floored
at 0). :func:`plan` then gives, for each J, the fewest test subjects n that reach a target
half-width (none when tau^2 alone is too large for that J).

The estimates come from few replicates (tau^2 from J - 1 degrees of freedom): a plan is a
point estimate, to be checked by the suite it sizes, whose report states the half-width it
reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from cdsf_bench.bench.stats import minimal_detectable_difference

#: test sizes tried per replicate count (subjects of the task per replicate)
MAX_TEST_SUBJECTS = 100_000


@dataclass(frozen=True)
class Components:
    """The variance of a replicate's paired ΔAUC, split into training and test sampling."""

    method: str
    replicates: int
    mean_difference: float
    observed_variance: float  # sample variance of the replicate differences
    test_variance: float  # mean DeLong variance at the folder's test size
    test_subjects: float  # mean paired test subjects per replicate
    training_variance: float  # tau^2 = max(observed - test, 0)

    @property
    def per_subject(self) -> float:
        """c: DeLong's variance times the test size (the variance at one subject)."""
        return self.test_variance * self.test_subjects

    def replicate_variance(self, test_subjects: float) -> float:
        return self.training_variance + self.per_subject / test_subjects


def components(pairs: pd.DataFrame) -> list[Components]:
    """Per method, the variance components of its ΔAUC against the reference.

    ``pairs``: the per-replicate comparisons of one scenario and task (``comparisons.csv``
    rows: ``method``, ``auc_diff``, ``auc_diff_var``, ``n_paired``).
    """
    out = []
    for method in dict.fromkeys(pairs["method"]):
        part = pairs[(pairs["method"] == method)].dropna(subset=["auc_diff", "auc_diff_var"])
        if len(part) < 2:
            continue
        observed = float(part["auc_diff"].var(ddof=1))
        test = float(part["auc_diff_var"].mean())
        size = float(part["n_paired"].mean())
        out.append(
            Components(
                method,
                len(part),
                float(part["auc_diff"].mean()),
                observed,
                test,
                size,
                max(observed - test, 0.0),
            )
        )
    return out


def half_width(parts: Components, replicates: int, test_subjects: float, level: float = 0.95) -> float:
    """The predicted half-width of the paired interval with J independent replicates of n subjects."""
    sd = math.sqrt(parts.replicate_variance(test_subjects))
    return float(stats.t.ppf(0.5 + level / 2, replicates - 1) * sd / math.sqrt(replicates))


@dataclass(frozen=True)
class Plan:
    replicates: int
    test_subjects: int | None  # the fewest that reach the target; None: unreachable
    half_width: float  # predicted, at that size (at the largest tried when unreachable)
    mdd: float  # the predicted minimal detectable difference at 80% power


def plan(parts: Components, target: float, replicates: range) -> list[Plan]:
    """For each replicate count, the fewest test subjects per replicate reaching ``target``."""
    out = []
    for count in replicates:
        t = float(stats.t.ppf(0.975, count - 1))
        # t^2 (tau^2 + c / n) / J <= target^2  <=>  n >= c / (J target^2 / t^2 - tau^2)
        room = count * target**2 / t**2 - parts.training_variance
        needed = math.ceil(parts.per_subject / room) if room > 0 else None
        if needed is not None and needed > MAX_TEST_SUBJECTS:
            needed = None
        size = float(needed if needed is not None else MAX_TEST_SUBJECTS)
        sd = math.sqrt(parts.replicate_variance(size))
        out.append(
            Plan(count, needed, half_width(parts, count, size), minimal_detectable_difference(sd, count))
        )
    return out
