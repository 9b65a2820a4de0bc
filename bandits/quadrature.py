"""Probability best and expected loss of Beta posteriors by numerical integration.

With F_j and f_j each arm's posterior CDF and density,

    P(arm i is best)   = ∫ f_i(x) Π_{j≠i} F_j(x) dx
    E[max_j θ_j - θ_i] = ∫ (F_i(x) - Π_j F_j(x)) dx.

The Monte Carlo in ``stats`` drew 20,000 joint draws for these: 60-100 ms a segment of 43 arms
(3.4-5 s for an experiment page of 50 such segments), with a standard error of up to 0.35% on a
probability best. Integrated, the same segment is 2-6 ms and the figures are right to about 1e-6.

The integrals are taken in t = logit(x), where a Beta density is smooth with no singularity at 0
or 1 (a prior below 1 gives one in x), over the range where the maximum can lie, cut into panels
no wider than two of the narrowest local posterior's scales (in t: its standard deviation, or
where a skewed one bends faster, its curvature's; see _scale), each with 8 Gauss-Legendre nodes: a
posterior of millions of impressions beside one of a few hundred is resolved where each lives,
without a grid fine everywhere.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import special

from bandits._validation import FloatArray

# Mass left out at each end of each posterior: far below what a report shows (0.1%, 6 digits in
# the CSV export).
TAIL = 1e-12
# Panel width, in scales (_scale, in t) of the narrowest posterior over the panel. At 2 the
# largest error against adaptive quadrature was 2e-7 on a probability best (4 at 3e-7).
PANEL_SDS = 2.0
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(8)
# Probabilities best that sum further than this from 1 mean mass outside the range integrated:
# posteriors piled against 0 or 1 closer than a double resolves (priors of 0.001).
SUM_TOLERANCE = 1e-6


def best_and_loss(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray] | None:
    """Probability best and expected loss of each arm, or None where the posteriors sit beyond
    what a double resolves (see SUM_TOLERANCE) and only draws, with their ties, can say.

    Parameters
    ----------
    a, b : ndarray, shape (n_arms,)
        Beta posterior parameters, finite and > 0 (checked by the caller).

    Returns
    -------
    (prob_best, expected_loss), each ndarray of float64, shape (n_arms,)
        prob_best sums to 1; expected_loss is >= 0.
    """
    n = a.size
    if n == 1:
        return np.ones(1), np.zeros(1)
    with np.errstate(divide="ignore"):
        # The upper quantile as the lower one of Beta(b, a): more precise near 1, and 8x faster.
        t_lo = special.logit(special.betaincinv(a, b, TAIL))
        t_hi = -special.logit(special.betaincinv(b, a, TAIL))
    # Below the highest lower end, some arm is under it, so no arm is best there.
    start = t_lo.max()
    rivals = np.flatnonzero(t_hi > start)
    # None above it: the highest lower end rounded onto its own upper end (Beta(1e18, 1), whose
    # whole mass a double cannot part from 1).
    if not rivals.size:
        return None
    end = t_hi[rivals].max()
    if not (np.isfinite(start) and np.isfinite(end)):
        return None
    # Arms with the same posterior (new lines at the segment's prior) are integrated once, as
    # one kind, and get the very same figures: taken one by one, their products were multiplied
    # in different orders and differed in the last bits, which ranked equals.
    # (a + ib: one array to sort, half np.unique's time by rows, 45 against 92 µs for 3 arms.)
    kinds, first, kind_of, copies = np.unique(
        a[rivals] + 1j * b[rivals], return_index=True, return_inverse=True, return_counts=True
    )
    ka, kb = kinds.real, kinds.imag
    lo, hi = t_lo[rivals][first], t_hi[rivals][first]
    t, w = _nodes(lo.clip(start, end), hi, ka, kb)

    log_x, log_1mx = -np.logaddexp(0.0, -t), -np.logaddexp(0.0, t)
    x = np.exp(log_x)
    inside = (t >= lo[:, None]) & (t <= hi[:, None])
    # Outside its range an arm's CDF is 0 below and 1 above (to TAIL): betainc only inside it.
    cdf = (t > hi[:, None]).astype(np.float64)
    rows, cols = np.nonzero(inside)
    cdf[rows, cols] = special.betainc(ka[rows], kb[rows], x[cols])
    # Each kind's rivals: every other kind as often as it occurs, and its own other copies.
    others = _products_leaving_each_out(cdf ** copies[:, None]) * cdf ** (copies - 1)[:, None]
    density = np.zeros_like(cdf)
    density[rows, cols] = np.exp(
        ka[rows] * log_x[cols] + kb[rows] * log_1mx[cols] - special.betaln(ka, kb)[rows]
    )
    best_of_kind = (density * others) @ w
    best = np.zeros(n)
    best[rivals] = best_of_kind[kind_of]
    total = best_of_kind @ copies
    if abs(total - 1.0) > SUM_TOLERANCE:
        return None

    # Expected loss: below the start, the maximum is ~never there, so ∫ F_i exactly (by parts);
    # from there on, the integrand F_i - Π F_j, times dx/dt = x (1 - x).
    x_start = special.expit(start)
    mean = a / (a + b)
    loss = x_start * special.betainc(a, b, x_start) - mean * special.betainc(a + 1.0, b, x_start)
    dx = np.exp(log_x + log_1mx) * w
    # An arm that is no rival has F_i = 1 there; a rival's F_i - Π F_j is taken as
    # F_i (1 - Π_{j≠i} F_j), free of cancellation: the leader's loss is a small difference.
    gap = np.full(n, (1.0 - cdf[0] * others[0]) @ dx)
    gap[rivals] = ((cdf * (1.0 - others)) @ dx)[kind_of]
    loss += gap
    return best / total, np.maximum(loss, 0.0)


def _sd_logit(a: FloatArray, b: FloatArray) -> FloatArray:
    """Standard deviation of logit(θ) for θ ~ Beta(a, b)."""
    sd: FloatArray = np.sqrt(special.polygamma(1, a) + special.polygamma(1, b))
    return sd


def _scale(sd: FloatArray, n: FloatArray, left: float, right: float) -> float:
    """The narrowest of these arms' scales over [left, right] (in t): each arm's standard
    deviation, or where its density bends faster, 1 / sqrt of its log density's largest
    curvature there, (a + b) x (1 - x). A skewed posterior (a prior below 1: Beta(0.4, 19.6))
    has a standard deviation set by its long tail toward 0, 2.7, while its density turns at 0.9:
    panels of 2 sds missed 1e-4 to 1e-2 of probability best, and such segments fell to the draws.
    """
    x = special.expit(min(max(0.0, left), right))
    # Far out in logit space x rounds to 1: no bend to bound the panels, and no divide by zero
    # (a RuntimeWarning in the server's log for a posterior concentrated near 0 or 1).
    curvature = n.max() * x * (1.0 - x)
    return float(min(sd.min(), 1.0 / np.sqrt(curvature) if curvature > 0 else np.inf))


def _nodes(
    lo: FloatArray, hi: FloatArray, a: FloatArray, b: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Gauss-Legendre nodes and weights over [min(lo), max(hi)]: between consecutive ends of the
    arms' ranges, panels no wider than PANEL_SDS of the narrowest scale (_scale) of the arms
    whose range holds them."""
    sd = _sd_logit(a, b)
    ends = np.unique(np.concatenate([lo, hi]))
    edges = []
    for left, right in itertools.pairwise(ends):
        middle = (left + right) / 2
        here = (lo <= middle) & (middle <= hi)
        panels = 1
        if here.any():
            scale = _scale(sd[here], a[here] + b[here], left, right)
            panels = int(np.ceil((right - left) / (PANEL_SDS * scale)))
        edges.append(np.linspace(left, right, panels + 1)[:-1])
    edges.append(ends[-1:])
    cut = np.concatenate(edges)
    half = np.diff(cut) / 2
    t = ((cut[:-1] + half)[:, None] + half[:, None] * _NODES).ravel()
    w = (half[:, None] * _WEIGHTS).ravel()
    return t, w


def _products_leaving_each_out(cdf: FloatArray) -> FloatArray:
    """Row i: the product of every other row (by prefix and suffix products, so a CDF of 0 is no
    division by zero)."""
    m = len(cdf)
    before = np.ones_like(cdf)
    after = np.ones_like(cdf)
    if m > 1:
        before[1:] = np.cumprod(cdf[:-1], axis=0)
        after[:-1] = np.cumprod(cdf[:0:-1], axis=0)[::-1]
    return before * after
