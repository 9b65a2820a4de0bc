"""Where a new arm's posterior starts, and how old evidence fades.

A new challenger that starts at Beta(1, 1) claims a 50% conversion rate, so Thompson sampling floods
it with traffic until it has lost enough; one that starts at a strong prior starves. The segment's
own history says what a typical rate is: start there, but with few pseudo-trials.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from numpy.typing import ArrayLike

# No pseudo-count below Jeffreys' 1/2 where the cap allows. Far below it, Beta draws round to
# exactly 0.0 (P(draw == 0) is about exp(-745 * alpha)): Beta(6e-6, 1e-3), the fit to a 0/1000
# and a 5/10 arm, drew 0.0 99% of the time, so a new variant drew nothing but ties and
# prob_best broke them at random instead of by the posterior. The cap still wins, keeping the
# pooled mean; under the default cap of 20 that leaves alpha at 20 x the pooled rate, whose zero
# draws stay rare (5e-7) down to rates of 0.1%.
MIN_PSEUDO_COUNT = 0.5


def empirical_bayes_prior(
    successes: ArrayLike,
    trials: ArrayLike,
    *,
    max_pseudo_count: float = 20.0,
    min_arms: int = 2,
) -> tuple[float, float]:
    """Beta(alpha, beta) fitted to past arms' rates by the method of moments, capped.

    Parameters
    ----------
    successes, trials : array_like, shape (n_arms,)
        Each past arm's conversions and impressions; arms with no trials are ignored.
    max_pseudo_count : float
        alpha + beta never exceeds this: the prior is worth at most this many trials.
    min_arms : int
        With fewer past arms than this there is no spread to fit, and Beta(1, 1) is returned.

    Returns
    -------
    (alpha, beta) : floats, both > 0
        Both at least ``MIN_PSEUDO_COUNT`` unless the cap forbids it.
    """
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    # Written so that NaN fails every comparison: NaN successes gave the prior (nan, nan).
    if s.shape != n.shape or s.ndim != 1 or not np.all((s >= 0) & (s <= n) & np.isfinite(n)):
        raise ValueError(
            "successes and trials must be 1-D, equal length, finite, 0 <= successes <= trials"
        )
    # An infinite cap gave (inf, inf), and a NaN cap was ignored: both parameters must be finite.
    if not 0 < max_pseudo_count <= sys.float_info.max:
        raise ValueError(f"max_pseudo_count must be finite and > 0, got {max_pseudo_count!r}")
    seen = n > 0
    if seen.sum() < min_arms:
        return 1.0, 1.0
    s, n = s[seen], n[seen]
    # Smoothed pooled mean: never exactly 0 or 1, so both parameters stay positive.
    mean = (s.sum() + 1.0) / (n.sum() + 2.0)
    rates = s / n
    # Spread of the true rates = observed spread minus the binomial noise each arm adds.
    between = rates.var() - np.mean(mean * (1.0 - mean) / n)
    if between > 0:
        concentration = min(mean * (1.0 - mean) / between - 1.0, max_pseudo_count)
    else:
        concentration = max_pseudo_count  # arms agree within noise: the cap is all we allow
    # The floor keeps both parameters at MIN_PSEUDO_COUNT or more; the cap, applied last, wins.
    floor = MIN_PSEUDO_COUNT / min(mean, 1.0 - mean)
    concentration = min(max(concentration, floor), max_pseudo_count)
    # Except where a cap so small that a product underflows to 0 would break "both > 0": the
    # smallest positive double instead (the sum then exceeds such a cap by at most that much).
    smallest = math.ulp(0.0)
    return (
        max(float(mean * concentration), smallest),
        max(float((1.0 - mean) * concentration), smallest),
    )


def discount_factor(per_hour: float, hours: float) -> float:
    """Weight left on evidence `hours` old when each hour keeps `per_hour` of it."""
    if not 0.0 < per_hour <= 1.0:
        raise ValueError(f"discount per hour must be in (0, 1], got {per_hour!r}")
    if hours < 0:
        raise ValueError(f"hours must be >= 0, got {hours!r}")
    return float(per_hour**hours)
