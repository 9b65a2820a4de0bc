"""Off-policy evaluation: what a different policy would have earned, estimated from logged data.

A logging policy chose action ``a_i`` with probability ``p_i`` (its propensity) and saw reward
``r_i``. A target policy would choose that same action with probability ``q_i``. Reweighting each
row by the importance weight ``w_i = q_i / p_i`` turns the logged rewards into an estimate of the
target policy's mean reward, provided the logging policy gave every action the target policy might
take a non-zero probability.

Both estimators here return a normal-approximation confidence interval, or a Wilson score interval
on the effective sample size when the weighted rewards have no spread at all; no resampling is used,
so the results are deterministic functions of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

from bandits._validation import FloatArray

_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True)
class Estimate:
    """A point estimate of a policy's mean reward with a confidence interval.

    Attributes
    ----------
    value : float
        The estimate; NaN when it is undefined (SNIPS with every weight zero).
    lower, upper : float
        Confidence bounds; NaN when the spread cannot be estimated (n = 1, ``value`` is NaN, or
        no row carries any weight). Not clipped to [0, 1].
    n : int
        Number of logged rows used.
    effective_n : float
        Effective sample size ``(sum w)**2 / sum w**2`` of the importance weights; 0 when every
        weight is 0. Equals ``n`` when all weights are equal, and is far smaller when a few rows
        carry most of the weight, in which case the interval deserves little trust.
    """

    value: float
    lower: float
    upper: float
    n: int
    effective_n: float


def _validate(
    rewards: ArrayLike, logging_propensities: ArrayLike, target_probabilities: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(logging_propensities, dtype=np.float64)
    q = np.asarray(target_probabilities, dtype=np.float64)
    for name, arr in (
        ("rewards", r),
        ("logging_propensities", p),
        ("target_probabilities", q),
    ):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if not r.shape == p.shape == q.shape:
        raise ValueError(
            "rewards, logging_propensities and target_probabilities must have the same shape, "
            f"got {r.shape}, {p.shape} and {q.shape}"
        )
    if r.size == 0:
        raise ValueError("rewards must hold at least one logged row")
    if not np.all(np.isfinite(r) & (r >= 0.0) & (r <= 1.0)):
        raise ValueError("rewards must be finite and in [0, 1]")
    if not np.all(np.isfinite(p) & (p > 0.0) & (p <= 1.0)):
        raise ValueError("logging_propensities must be in (0, 1]")
    if not np.all(np.isfinite(q) & (q >= 0.0) & (q <= 1.0)):
        raise ValueError("target_probabilities must be in [0, 1]")
    with np.errstate(over="ignore"):
        weight_squares = np.sum((q / p) ** 2)
    # A propensity like 1e-310 passes the range check, but its weight overflows to inf, and
    # inf * 0 made the estimate, the interval and the effective sample size NaN.
    if not np.isfinite(weight_squares):
        raise ValueError(
            "logging_propensities are too small: the importance weights "
            "target_probabilities / logging_propensities overflow"
        )
    return r, p, q


def _z(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, float | int) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    upper = 0.5 + level / 2.0
    if upper >= 1.0:
        # A level within a rounding of 1 (0.9999999999999999) passes the check above, but its
        # quantile is at 1: the interval would be infinite.
        raise ValueError(f"level {level!r} is too close to 1 for a finite interval")
    # The standard library's quantile, not scipy.stats': importing that took 0.7 s of every
    # copybandit command's start (the service imports this module), for one number.
    return _STANDARD_NORMAL.inv_cdf(upper)


def _effective_n(w: FloatArray) -> float:
    largest = float(np.max(w))
    if largest <= 0.0:
        return 0.0
    # Scaled by the largest weight: (sum w)**2 can overflow where sum w**2 does not.
    u = w / largest
    return float(np.sum(u)) ** 2 / float(np.sum(u * u))


def _wilson(value: float, effective_n: float, z: float) -> tuple[float, float]:
    """Wilson score bounds for a mean of ``effective_n`` rewards in [0, 1] that all equal ``value``.

    When every weighted reward is the same (typically: a variant shown some dozens of times and
    never converted), the sample spread is 0 and the normal interval collapses to the point: a
    certain 0%. The score interval does not lean on the sample spread, so it stays honest there.
    """
    if effective_n <= 0.0:
        nan = float("nan")
        return nan, nan
    # IPS can overshoot 1 when every weight exceeds 1; the bounds then still hold the estimate.
    p = min(max(value, 0.0), 1.0)
    shrink = 1.0 + z * z / effective_n
    centre = (p + z * z / (2.0 * effective_n)) / shrink
    half = z * np.sqrt(p * (1.0 - p) / effective_n + z * z / (4.0 * effective_n**2)) / shrink
    return min(centre - half, value), max(centre + half, value)


def ips(
    rewards: ArrayLike,
    logging_propensities: ArrayLike,
    target_probabilities: ArrayLike,
    *,
    level: float = 0.95,
) -> Estimate:
    """Inverse propensity scoring: the mean of ``w * r`` with ``w = target / logging``.

    Unbiased when the logged propensities are the true ones and cover the target's support.
    The interval is the normal approximation ``mean +/- z * sd / sqrt(n)``, with ``sd`` the
    sample standard deviation (ddof=1) of ``w * r`` and ``z`` the two-sided normal quantile for
    ``level``. When every ``w * r`` is the same, ``sd`` is 0 and says nothing; the interval is
    then the Wilson score interval for that mean over ``effective_n`` rows.

    Parameters
    ----------
    rewards : array_like, shape (n,)
        Logged rewards, finite and in [0, 1].
    logging_propensities : array_like, shape (n,)
        Probability the logging policy gave the logged action, in (0, 1].
    target_probabilities : array_like, shape (n,)
        Probability the target policy gives the logged action, in [0, 1].
    level : float in (0, 1)
        Confidence level of the interval.

    Returns
    -------
    Estimate
        ``lower`` and ``upper`` are NaN when n = 1 or every weight is 0.

    Raises
    ------
    ValueError
        Naming the offending argument.
    """
    r, p, q = _validate(rewards, logging_propensities, target_probabilities)
    z = _z(level)
    w = q / p
    x = w * r
    n = int(x.size)
    value = float(np.mean(x))
    eff = _effective_n(w)
    if n < 2:
        return Estimate(value, float("nan"), float("nan"), n, eff)
    if np.ptp(x) == 0.0:
        return Estimate(value, *_wilson(value, eff, z), n, eff)
    half = z * float(np.std(x, ddof=1)) / np.sqrt(n)
    return Estimate(value, value - half, value + half, n, eff)


def snips(
    rewards: ArrayLike,
    logging_propensities: ArrayLike,
    target_probabilities: ArrayLike,
    *,
    level: float = 0.95,
) -> Estimate:
    """Self-normalised IPS: ``sum(w * r) / sum(w)``.

    Slightly biased (consistently so for large n) but lower-variance than :func:`ips`, and always
    within [0, 1] for rewards in [0, 1]. The interval is the delta-method normal approximation
    ``value +/- z * se`` with ``se**2 = sum(w**2 * (r - value)**2) / sum(w)**2``. When the target
    policy puts all its weight on one logged action, every non-zero weight is equal and this is
    that action's logged mean with its binomial standard error ``sqrt(v * (1 - v) / k)``. When
    every row with a non-zero weight has the same reward, that standard error is 0; the interval
    is then the Wilson score interval for ``value`` over ``effective_n`` rows.

    Parameters
    ----------
    rewards : array_like, shape (n,)
        Logged rewards, finite and in [0, 1].
    logging_propensities : array_like, shape (n,)
        Probability the logging policy gave the logged action, in (0, 1].
    target_probabilities : array_like, shape (n,)
        Probability the target policy gives the logged action, in [0, 1].
    level : float in (0, 1)
        Confidence level of the interval.

    Returns
    -------
    Estimate
        ``value``, ``lower`` and ``upper`` are NaN when every weight is 0 (the target policy never
        takes a logged action); the bounds are NaN when only one row has a non-zero weight.

    Raises
    ------
    ValueError
        Naming the offending argument.
    """
    r, p, q = _validate(rewards, logging_propensities, target_probabilities)
    z = _z(level)
    w = q / p
    n = int(w.size)
    total = float(np.sum(w))
    eff = _effective_n(w)
    if total <= 0.0:
        nan = float("nan")
        return Estimate(nan, nan, nan, n, eff)
    value = float(np.sum(w * r)) / total
    if np.count_nonzero(w) < 2:
        return Estimate(value, float("nan"), float("nan"), n, eff)
    if np.ptp(r[w > 0.0]) == 0.0:
        return Estimate(value, *_wilson(value, eff, z), n, eff)
    se = float(np.sqrt(np.sum((w * (r - value)) ** 2))) / total
    return Estimate(value, value - z * se, value + z * se, n, eff)
