"""Paired statistics for comparing two methods on the same test subjects.

- AUC: DeLong's test for two correlated ROC curves (DeLong, DeLong and Clarke-Pearson,
  Biometrics 1988). Each method's AUC is the Mann-Whitney statistic; its structural
  components (per positive subject, the fraction of negatives it outranks; per negative
  subject, the fraction of positives that outrank it) give the covariance matrix of the two
  AUCs, and z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab) is referred to N(0, 1).
- Balanced accuracy: a paired bootstrap over subjects (both methods scored on the same
  resampled subjects, resampling within each class), seeded.
- Across seeds or folds: the mean of the per-replicate differences with a Student t interval
  and its p-value; when the replicates re-use one cohort (repeated hold-out or k-fold) the
  variance is corrected for their overlap (Nadeau and Bengio, Machine Learning 2003).
- Over a suite's comparisons: Holm's step-down adjustment (statsmodels' multipletests).
- The design's power: the minimal difference the across-replicate test detects with 80%
  power (statsmodels' power of the one-sample t-test, the noncentral t), with the range the
  few degrees of freedom of the replicates' variance allow (its chi-square interval).
- Equivalence: two one-sided tests (TOST, Schuirmann 1987) of a mean within a margin named
  in advance, on the same corrected standard error as the interval.

:func:`compare_replicate` applies both tests to two runs of a suite folder (one replicate,
paired by participant); the report and the checks (:mod:`cdsf_bench.bench.checks`) share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from cdsf_bench.errors import InputError
from cdsf_bench.run_folder import RunFolder

#: paired-bootstrap replicates per comparison of two runs
BOOTSTRAP_REPLICATES = 2000


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    variance: float  # of the difference
    z: float
    p_value: float  # two-sided


def _structural_components(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V10 (one per positive) and V01 (one per negative) of the Mann-Whitney kernel.

    The kernel is 1 when the positive scores higher, 1/2 on a tie, 0 otherwise; the AUC is
    the mean of V10 (equally of V01).
    """
    kernel = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    return kernel.mean(axis=1), kernel.mean(axis=0)


def delong_test(labels: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> DeLongResult:
    """DeLong's paired test of AUC_a = AUC_b, both scored on the same subjects.

    ``labels`` are 0/1; scores are any monotone measure of the positive class. When the
    variance of the difference is zero (for example identical scores) the difference is
    zero and z = 0, p = 1; a non-zero difference with zero variance has no test (NaN).
    """
    labels = np.asarray(labels).astype(int)
    scores = np.stack([np.asarray(score_a, float), np.asarray(score_b, float)])
    positive, negative = labels == 1, labels == 0
    m, n = int(positive.sum()), int(negative.sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least two subjects of each class, got {m} and {n}.")
    v10 = np.empty((2, m))
    v01 = np.empty((2, n))
    for k in range(2):
        v10[k], v01[k] = _structural_components(scores[k, positive], scores[k, negative])
    aucs = v10.mean(axis=1)
    covariance = np.cov(v10) / m + np.cov(v01) / n
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    difference = float(aucs[0] - aucs[1])
    if variance <= 1e-15:
        z, p = (0.0, 1.0) if abs(difference) < 1e-12 else (math.nan, math.nan)
    else:
        z = difference / math.sqrt(variance)
        p = float(2 * stats.norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), difference, max(variance, 0.0), z, p)


@dataclass(frozen=True)
class BootstrapResult:
    difference: float  # metric_a - metric_b on all subjects
    ci_low: float
    ci_high: float
    p_value: float  # two-sided
    replicates: int


def paired_bootstrap_bacc(
    labels: ArrayLike,
    predicted_a: ArrayLike,
    predicted_b: ArrayLike,
    *,
    replicates: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap of the balanced-accuracy difference a - b over subjects.

    Each replicate resamples subjects with replacement within each class (so both classes
    are always present) and scores both methods on the same resample. The interval is the
    percentile interval; the two-sided p-value is twice the smaller tail of the replicate
    differences at zero, counted with add-one smoothing and capped at 1.
    """
    labels = np.asarray(labels).astype(int)
    # per subject: +1/-1/0 when only a, only b, or both/neither are right
    gain = (np.asarray(predicted_a).astype(int) == labels).astype(float) - (
        np.asarray(predicted_b).astype(int) == labels
    )
    classes = [np.flatnonzero(labels == c) for c in (0, 1)]
    if any(len(rows) == 0 for rows in classes):
        raise ValueError("The paired bootstrap of balanced accuracy needs subjects of both classes.")
    rng = np.random.default_rng(seed)
    # balanced accuracy is the mean of the two per-class recalls, so the difference is the
    # mean over classes of the per-class mean gain; resampling within a class keeps its size
    differences = np.mean(
        [gain[rng.choice(rows, (replicates, len(rows)))].mean(axis=1) for rows in classes], axis=0
    )
    observed = np.mean([gain[rows].mean() for rows in classes])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    # add-one counts keep p above zero: B replicates cannot show p below 1 / (B + 1)
    smaller_tail = min(np.sum(differences <= 0), np.sum(differences >= 0)) + 1
    p = min(1.0, 2 * smaller_tail / (replicates + 1))
    return BootstrapResult(float(observed), float(low), float(high), float(p), replicates)


@dataclass(frozen=True)
class MeanInterval:
    mean: float
    low: float
    high: float
    n: int
    sd: float = math.nan  # of the per-replicate values
    p_value: float = math.nan  # two-sided, of a true mean of 0
    test_train_ratio: float = 0.0  # the overlap correction applied (0: independent replicates)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def standard_error(self) -> float:
        """sd * sqrt(1 / J + r), the design's standard error of the mean (NaN for one value)."""
        return self.sd * math.sqrt(1 / self.n + self.test_train_ratio) if self.n >= 2 else math.nan

    def one_sided(self, alpha: float) -> tuple[float, float]:
        """The one-sided (1 - alpha) bounds (at least, at most): mean -/+ t(1 - alpha, J - 1) SE.

        Each alone holds with confidence 1 - alpha ("the advantage is at most +x"); together
        they are the two-sided (1 - 2 alpha) interval that equivalence tests read.
        """
        if self.n < 2:
            return math.nan, math.nan
        reach = float(stats.t.ppf(1 - alpha, self.n - 1)) * self.standard_error
        return self.mean - reach, self.mean + reach


def t_interval(values: np.ndarray, level: float = 0.95, test_train_ratio: float = 0.0) -> MeanInterval:
    """Mean of per-replicate values with a Student t interval and p-value (NaN for one value).

    With ``test_train_ratio`` = n_test / n_train > 0 this is the corrected resampled t-test
    of Nadeau and Bengio (2003): replicates that re-use one cohort share training and test
    subjects, so their values are positively correlated and the naive variance s^2 / J of
    their mean is too small; it is replaced by (1 / J + n_test / n_train) s^2, still with
    J - 1 degrees of freedom (for repeated k-fold, J = repeats x folds: Bouckaert and Frank,
    PAKDD 2004). Independent replicates (each its own cohort) take ratio 0, the plain test.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return MeanInterval(math.nan, math.nan, math.nan, 0, test_train_ratio=test_train_ratio)
    mean = float(values.mean())
    if n == 1:
        return MeanInterval(mean, math.nan, math.nan, 1, test_train_ratio=test_train_ratio)
    sd = float(values.std(ddof=1))
    # sd * sqrt(1 + J r) / sqrt(J) = sd * sqrt(1 / J + r); written so that r = 0 is exactly sd / sqrt(J)
    inflation = math.sqrt(1 + n * test_train_ratio)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd * inflation / math.sqrt(n))
    se = sd * inflation / math.sqrt(n)
    # no spread (every replicate gave the same difference): p is 1 for a zero mean, else 0
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1)) if se > 0 else (1.0 if mean == 0 else 0.0)
    return MeanInterval(mean, mean - half, mean + half, n, sd, p, test_train_ratio)


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests of a mean within (-margin, +margin)."""

    interval: MeanInterval  # the mean and its design's standard error
    margin: float
    p_value: float  # the larger of the two one-sided p-values: below alpha means equivalent


def equivalence_test(values: np.ndarray, margin: float, test_train_ratio: float = 0.0) -> Equivalence:
    """TOST of H0: |mean| >= margin against H1: |mean| < margin, on the t statistic of
    :func:`t_interval` (the design's correction included, J - 1 degrees of freedom).

    The lower test refers (mean + margin) / SE, the upper (mean - margin) / SE to Student's t;
    equivalence at level alpha is both rejecting, that is p = max(p_lower, p_upper) < alpha,
    the same as the (1 - 2 alpha) interval lying inside the margin. With no spread p is 0
    inside the margin and 1 outside; NaN for fewer than two values.
    """
    interval = t_interval(values, test_train_ratio=test_train_ratio)
    if interval.n < 2:
        return Equivalence(interval, margin, math.nan)
    se, df = interval.standard_error, interval.n - 1
    if se > 0:
        p_lower = float(stats.t.sf((interval.mean + margin) / se, df))
        p_upper = float(stats.t.cdf((interval.mean - margin) / se, df))
        p = max(p_lower, p_upper)
    else:
        p = 0.0 if abs(interval.mean) < margin else 1.0
    return Equivalence(interval, margin, p)


def holm(p_values: ArrayLike, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down adjusted p-values (statsmodels' multipletests) of the finite p-values;
    NaN stays NaN and is not counted in the family."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        adjusted[finite] = multipletests(p[finite], alpha=alpha, method="holm")[1]
    return adjusted


#: the power at which the minimal detectable difference is stated (the planned power)
POWER = 0.8
#: the level of a suite's checks and answers unless its file sets ``alpha``
ALPHA = 0.05


def minimal_detectable_difference(
    sd: float, replicates: int, test_train_ratio: float = 0.0, *, alpha: float = 0.05, power: float = POWER
) -> float:
    """The smallest true mean difference the across-replicate t-test detects with ``power``.

    The test (:func:`t_interval`) divides the mean of J replicate differences by its
    standard error se = sd * sqrt(1 / J + r); under a true difference delta the statistic
    is noncentral t with J - 1 degrees of freedom and noncentrality delta / se. statsmodels'
    one-sample t-test power solves for the standardised effect d with noncentrality
    d * sqrt(J) at that power and two-sided ``alpha``, so delta = d * sqrt(J) * se. NaN with
    fewer than two replicates or no spread.
    """
    if replicates < 2 or not np.isfinite(sd) or sd <= 0:
        return math.nan
    effect = TTestPower().solve_power(
        effect_size=None, nobs=replicates, alpha=alpha, power=power, alternative="two-sided"
    )
    se = sd * math.sqrt(1 / replicates + test_train_ratio)
    return float(np.asarray(effect).item() * math.sqrt(replicates) * se)


def mdd_range(
    sd: float, replicates: int, test_train_ratio: float = 0.0, *, alpha: float = 0.05, power: float = POWER
) -> tuple[float, float]:
    """The MDD at the lower and upper (1 - alpha) confidence limits of the replicates' sd.

    The sample variance of J replicates has (J - 1) s^2 / sigma^2 ~ chi-square(J - 1), so
    sigma^2 lies in [(J - 1) s^2 / chi2(1 - alpha / 2), (J - 1) s^2 / chi2(alpha / 2)]; the
    MDD is proportional to sigma, so this is the range of MDDs the data cannot tell apart
    (wide for few replicates: at J = 3 and alpha 0.05 the upper limit is 12 times the lower,
    at J = 10 2.7 times).
    """
    point = minimal_detectable_difference(sd, replicates, test_train_ratio, alpha=alpha, power=power)
    if not np.isfinite(point):
        return math.nan, math.nan
    df = replicates - 1
    low, high = (math.sqrt(df / float(stats.chi2.ppf(q, df))) for q in (1 - alpha / 2, alpha / 2))
    return point * low, point * high


def mean_sd(values: pd.Series, digits: int = 3) -> str:
    """``mean ± sd`` over replicates (one value alone; "-" for none)."""
    values = values.astype(float).dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def interval_text(values: pd.Series, test_train_ratio: float = 0.0) -> str:
    """The mean of per-replicate differences with its 95% t interval, signed ("-" for none)."""
    result = t_interval(values.to_numpy(), test_train_ratio=test_train_ratio)
    if result.n == 0:
        return "-"
    if result.n == 1:
        return f"{result.mean:+.3f}"
    return f"{result.mean:+.3f} [{result.low:+.3f}, {result.high:+.3f}]"


def replicate_of(run_folder: str) -> str:
    """``[scenario/]task/seed-N`` (or ``.../fold-N``): the replicate a run belongs to."""
    return Path(run_folder).parent.as_posix()


def compare_replicate(folder: Path, run: pd.Series, reference: pd.Series) -> dict:
    """DeLong and paired-bootstrap tests of one run against the reference run of its replicate."""
    mine = RunFolder(folder / run["run_folder"]).predictions()
    theirs = RunFolder(folder / reference["run_folder"]).predictions()
    paired = mine.merge(theirs, on="participant_id", suffixes=("", "_ref"))
    if not (paired["label"] == paired["label_ref"]).all():
        raise InputError(f"Runs {run['run_folder']} and {reference['run_folder']} disagree on test labels.")
    labels = paired["label"].to_numpy()
    out = {
        "task": run["task"],
        "replicate": Path(replicate_of(run["run_folder"])).name,
        "method": run["method"],
        "reference": reference["method"],
        "n_paired": len(paired),
    }
    try:
        delong = delong_test(labels, paired["probability"], paired["probability_ref"])
        out.update(
            auc_diff=delong.difference,
            auc_diff_var=delong.variance,
            delong_z=delong.z,
            delong_p=delong.p_value,
        )
    except ValueError:
        out.update(auc_diff=math.nan, auc_diff_var=math.nan, delong_z=math.nan, delong_p=math.nan)
    try:
        boot = paired_bootstrap_bacc(
            labels,
            paired["prediction"],
            paired["prediction_ref"],
            replicates=BOOTSTRAP_REPLICATES,
            seed=int(run["seed"]),
        )
        out.update(
            bacc_diff=boot.difference, bacc_ci_low=boot.ci_low, bacc_ci_high=boot.ci_high, bacc_p=boot.p_value
        )
    except ValueError:
        out.update(bacc_diff=math.nan, bacc_ci_low=math.nan, bacc_ci_high=math.nan, bacc_p=math.nan)
    return out
