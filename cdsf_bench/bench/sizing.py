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
at 0). :func:`plan` then gives, for each J, the fewest test subjects n that reach a
:class:`Target` (none when tau^2 alone is too large for that J). Every target is a largest
replicate sd sigma_max(J), so n = c / (sigma_max^2 - tau^2) rounded up:

- a half-width h of the (1 - alpha) interval: sigma_max = h sqrt(J) / t(1 - alpha / 2, J - 1);
- a minimal detectable difference D at ``power`` (two-sided ``alpha``): the MDD is
  proportional to sigma (``bench.stats.minimal_detectable_difference``, the one MDD formula,
  exact by the noncentral t through statsmodels), so sigma_max = D / MDD(sigma = 1, J);
- an equivalence margin M: the two one-sided tests at ``alpha`` against ±M (the ``not_beats``
  and ``metric_abs_below`` checks, ``bench.checks``) reject with probability ``power`` when
  the true difference is 0 (:func:`tost_power`, exact), and the check is evaluable there: its
  MDD at the checks' planned power is at most M, else the check reports "not evaluable at this
  power" whatever the data (at few replicates this condition decides).

The estimates come from few replicates (tau^2 from J - 1 degrees of freedom): a plan is a
point estimate, to be checked by the suite it sizes, whose report states the half-width it
reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd
from scipy import integrate, optimize, stats

from cdsf_bench.bench.stats import ALPHA, POWER, minimal_detectable_difference

#: test sizes tried per replicate count (subjects of the task per replicate)
MAX_TEST_SUBJECTS = 100_000
#: what a design is sized for (``cdsf-bench power --half-width / --mdd / --margin``)
TargetKind = Literal["half_width", "mdd", "margin"]


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


def mdd_per_sd(replicates: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The MDD of J independent replicates per unit of a replicate's sd (the MDD is linear in it)."""
    return minimal_detectable_difference(1.0, replicates, alpha=alpha, power=power)


def tost_power(difference: float, sd: float, replicates: int, margin: float, alpha: float = ALPHA) -> float:
    """The probability that the paired TOST at ``alpha`` declares equivalence within ±``margin``.

    J replicate differences ~ N(``difference``, ``sd``^2): the mean m ~ N(difference, sd^2 / J)
    and (J - 1) s^2 / sd^2 ~ chi-square(J - 1), independent. Both one-sided tests reject iff
    -margin + t s / sqrt(J) < m < margin - t s / sqrt(J), t = t(1 - alpha, J - 1), so given s
    the power is a difference of two normal probabilities (zero once t s / sqrt(J) >= margin),
    and the power is its expectation over s: an integral against the chi-square density,
    computed by quadrature (exact to its tolerance; the noncentral-t shortcut P(T1 rejects) +
    P(T2 rejects) - 1 is only a lower bound, since both tests read the same s).
    """
    if replicates < 2 or not math.isfinite(sd) or sd <= 0:
        return math.nan
    df = replicates - 1
    critical = float(stats.t.ppf(1 - alpha, df))
    se = sd / math.sqrt(replicates)
    # u = (J - 1) s^2 / sd^2 below which both tests can reject: t s / sqrt(J) < margin
    reach = df * (margin * math.sqrt(replicates) / (critical * sd)) ** 2
    log_norm = -(df / 2) * math.log(2) - math.lgamma(df / 2)

    def given(u: float) -> float:
        if u <= 0:
            return 0.0
        room = margin - critical * sd * math.sqrt(u / df) / math.sqrt(replicates)
        inside = _normal_cdf((room - difference) / se) - _normal_cdf((-room - difference) / se)
        return max(inside, 0.0) * math.exp(log_norm + (df / 2 - 1) * math.log(u) - u / 2)

    # beyond this u the chi-square density holds less than 1e-15 of its mass
    upper = min(reach, float(stats.chi2.isf(1e-15, df)))
    value, _ = integrate.quad(given, 0.0, upper, epsabs=1e-11, epsrel=1e-9, limit=200)
    return float(min(max(value, 0.0), 1.0))


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def tost_largest_sd(margin: float, replicates: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The largest replicate sd at which the TOST has ``power`` when the true difference is 0.

    The power falls from 1 to 0 as the sd grows (at an sd of margin sqrt(J) the standard
    error equals the margin and the power is below any sensible target), solved by Brent's method.
    """

    def excess(sd: float) -> float:
        return tost_power(0.0, sd, replicates, margin, alpha) - power

    low, high = margin * 1e-6, margin * math.sqrt(replicates)
    if excess(high) >= 0:
        return high
    return float(optimize.brentq(excess, low, high, xtol=margin * 1e-12, rtol=1e-12))


@dataclass(frozen=True)
class Target:
    """What a design must reach, as the largest replicate sd sigma(n) that J replicates allow.

    ``half_width``: the (1 - ``alpha``) interval's half-width at most ``value``; ``mdd``: the
    MDD at ``power`` and two-sided ``alpha`` at most ``value``; ``margin``: the TOST at
    ``alpha`` against ±``value`` has ``power`` at a true difference of 0 and the check's MDD
    (at the checks' planned power ``POWER``) is at most ``value``.
    """

    kind: TargetKind
    value: float
    alpha: float = ALPHA
    power: float = POWER

    def largest_sd(self, replicates: int) -> float:
        if self.kind == "half_width":
            return self.value * math.sqrt(replicates) / float(stats.t.ppf(1 - self.alpha / 2, replicates - 1))
        if self.kind == "mdd":
            return self.value / mdd_per_sd(replicates, self.alpha, self.power)
        evaluable = self.value / mdd_per_sd(replicates, self.alpha, POWER)
        return min(tost_largest_sd(self.value, replicates, self.alpha, self.power), evaluable)


@dataclass(frozen=True)
class Plan:
    replicates: int
    test_subjects: int | None  # the fewest that reach the target; None: unreachable
    half_width: float  # predicted, at that size (at the largest tried when unreachable)
    mdd: float  # the predicted MDD at the target's alpha and power (a margin's: the checks' power)
    tost_power: float | None = None  # a margin's target: the TOST's power there at a true difference 0


def plan(parts: Components, target: Target, replicates: range) -> list[Plan]:
    """For each replicate count, the fewest test subjects per replicate reaching ``target``."""
    out = []
    for count in replicates:
        # tau^2 + c / n <= sigma_max^2  <=>  n >= c / (sigma_max^2 - tau^2)
        room = target.largest_sd(count) ** 2 - parts.training_variance
        needed = max(2, math.ceil(parts.per_subject / room)) if room > 0 else None
        if needed is not None and needed > MAX_TEST_SUBJECTS:
            needed = None
        size = float(needed if needed is not None else MAX_TEST_SUBJECTS)
        sd = math.sqrt(parts.replicate_variance(size))
        # a margin's MDD is the checks' (at their planned power), which decides evaluability
        mdd_power = POWER if target.kind == "margin" else target.power
        out.append(
            Plan(
                count,
                needed,
                half_width(parts, count, size, 1 - target.alpha),
                minimal_detectable_difference(sd, count, alpha=target.alpha, power=mdd_power),
                tost_power(0.0, sd, count, target.value, target.alpha) if target.kind == "margin" else None,
            )
        )
    return out
