"""Summaries of Beta posteriors for reporting.

Monte-Carlo functions default to a fixed seed: a report viewed twice on the same
data should show the same numbers rather than jitter with each request.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import betaincinv

from bandits._validation import (
    FloatArray,
    RNGLike,
    as_generator,
    require_count,
    require_positive_finite,
)
from bandits.ties import argmax_rows

DEFAULT_SEED = 0


def _params(alpha: ArrayLike, beta: ArrayLike) -> tuple[FloatArray, FloatArray]:
    a = require_positive_finite("alpha", alpha)
    b = require_positive_finite("beta", beta)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"alpha and beta must be 1-D arrays of the same shape, got {a.shape} and {b.shape}"
        )
    if a.size == 0:
        raise ValueError("alpha and beta must describe at least one arm")
    return a, b


def _draws(
    alpha: ArrayLike, beta: ArrayLike, n_samples: int, rng: RNGLike
) -> tuple[FloatArray, np.random.Generator]:
    """Posterior draws, shape (n_samples, n_arms), and the generator that drew them."""
    a, b = _params(alpha, beta)
    n_samples = require_count("n_samples", n_samples)
    gen = as_generator(DEFAULT_SEED if rng is None else rng)
    return gen.beta(a, b, size=(n_samples, a.size)), gen


def _prob_best(draws: FloatArray, gen: np.random.Generator) -> FloatArray:
    n_samples, n_arms = draws.shape
    return np.bincount(argmax_rows(draws, gen), minlength=n_arms) / n_samples


def _expected_loss(draws: FloatArray) -> FloatArray:
    # Each term is >= 0 by construction, so the mean is too (no cancellation to clip).
    result: FloatArray = (draws.max(axis=1, keepdims=True) - draws).mean(axis=0)
    return result


def prob_best(
    alpha: ArrayLike, beta: ArrayLike, *, n_samples: int = 20_000, rng: RNGLike = None
) -> FloatArray:
    """Monte-Carlo probability that each arm has the highest true rate.

    Parameters
    ----------
    alpha, beta : array_like, shape (n_arms,)
        Beta posterior parameters, finite and > 0.
    n_samples : int
        Number of joint posterior draws.
    rng : numpy.random.Generator, int or None
        None means a fixed seed (``DEFAULT_SEED``), so repeated calls agree.

    Returns
    -------
    ndarray of float64, shape (n_arms,)
        Sums to 1; exactly [1.0] for a single arm.
    """
    return _prob_best(*_draws(alpha, beta, n_samples, rng))


def expected_loss(
    alpha: ArrayLike, beta: ArrayLike, *, n_samples: int = 20_000, rng: RNGLike = None
) -> FloatArray:
    """Monte-Carlo E[max_j theta_j - theta_i]: the rate given up by committing to arm i.

    Parameters are as for :func:`prob_best` (including the fixed default seed).

    Returns
    -------
    ndarray of float64, shape (n_arms,)
        Non-negative; exactly [0.0] for a single arm.
    """
    return _expected_loss(_draws(alpha, beta, n_samples, rng)[0])


def credible_interval(alpha: ArrayLike, beta: ArrayLike, level: float = 0.95) -> FloatArray:
    """Equal-tailed posterior credible intervals.

    Parameters
    ----------
    alpha, beta : array_like, shape (n_arms,)
    level : float in (0, 1)

    Returns
    -------
    ndarray of float64, shape (n_arms, 2)
        Column 0 is the lower bound, column 1 the upper bound.
    """
    a, b = _params(alpha, beta)
    if not (isinstance(level, float | int) and 0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    tail = (1.0 - level) / 2.0
    lower = betaincinv(a, b, tail)
    upper = betaincinv(a, b, 1.0 - tail)
    return np.column_stack([lower, upper]).astype(np.float64)


def posterior_mean(alpha: ArrayLike, beta: ArrayLike) -> FloatArray:
    """Posterior mean alpha / (alpha + beta), shape (n_arms,)."""
    a, b = _params(alpha, beta)
    # Written without the sum: alpha + beta overflows to inf for parameters near 1e308, and the
    # mean read 0. b / a may still overflow, to inf, which gives the right limit 0.
    with np.errstate(over="ignore"):
        mean: FloatArray = 1.0 / (1.0 + b / a)
    return mean


def summarize(
    alpha: ArrayLike,
    beta: ArrayLike,
    *,
    n_samples: int = 20_000,
    rng: RNGLike = None,
    level: float = 0.95,
) -> dict[str, FloatArray]:
    """Everything a report shows, from a single set of posterior draws.

    ``prob_best`` and ``expected_loss`` share draws, so with the same ``rng`` they
    equal the individual functions' results.

    Returns
    -------
    dict with keys "mean", "lower", "upper", "prob_best", "expected_loss"
        Each an ndarray of float64, shape (n_arms,).
    """
    interval = credible_interval(alpha, beta, level)
    draws, gen = _draws(alpha, beta, n_samples, rng)
    return {
        "mean": posterior_mean(alpha, beta),
        "lower": interval[:, 0],
        "upper": interval[:, 1],
        "prob_best": _prob_best(draws, gen),
        "expected_loss": _expected_loss(draws),
    }


def prob_below(
    alpha: ArrayLike,
    beta: ArrayLike,
    reference_alpha: float,
    reference_beta: float,
    *,
    n_samples: int = 20_000,
    rng: RNGLike = None,
) -> FloatArray:
    """P(each arm's rate < the reference arm's rate), e.g. a challenger against the control.

    Returns
    -------
    ndarray of float64, shape (n_arms,)
    """
    # One generator for both: two generators from the same seed would draw correlated samples.
    gen = as_generator(DEFAULT_SEED if rng is None else rng)
    draws, _ = _draws(alpha, beta, n_samples, gen)
    reference, _ = _draws([reference_alpha], [reference_beta], n_samples, gen)
    return (draws < reference).mean(axis=0).astype(np.float64)
