"""Thompson sampling over Bernoulli arms with conjugate Beta posteriors."""

from __future__ import annotations

from typing import overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bandits._validation import (
    FloatArray,
    RNGLike,
    as_generator,
    require_count,
    require_positive_finite,
)
from bandits.ties import argmax_rows


def _prior(name: str, value: ArrayLike, n_arms: int) -> FloatArray:
    arr = require_positive_finite(name, value)
    if arr.ndim == 0:
        arr = np.full(n_arms, arr)
    elif arr.shape != (n_arms,):
        raise ValueError(f"{name} must have shape ({n_arms},), got {arr.shape}")
    # Copy so later updates never write through to an array the caller still holds.
    return arr.copy()


class BetaBernoulliTS:
    """Beta-Bernoulli Thompson sampling policy.

    Each arm's conversion rate has a Beta(alpha_i, beta_i) posterior; ``select``
    draws one rate per arm and plays the argmax.

    Parameters
    ----------
    n_arms : int
        Number of arms, >= 1.
    alpha, beta : float or array_like, shape (n_arms,)
        Prior pseudo-counts of successes and failures; finite and > 0.
    rng : numpy.random.Generator, int or None
        Source of randomness; an int is a seed, None a fresh ``default_rng()``.
    """

    def __init__(
        self,
        n_arms: int,
        alpha: ArrayLike = 1.0,
        beta: ArrayLike = 1.0,
        rng: RNGLike = None,
    ) -> None:
        if isinstance(n_arms, bool) or not isinstance(n_arms, int | np.integer) or n_arms < 1:
            raise ValueError(f"n_arms must be >= 1, got {n_arms!r}")
        self._alpha = _prior("alpha", alpha, int(n_arms))
        self._beta = _prior("beta", beta, int(n_arms))
        # An array prior says nothing about arms added later, so those fall back to uniform.
        self._default_alpha = float(np.asarray(alpha)) if np.ndim(alpha) == 0 else 1.0
        self._default_beta = float(np.asarray(beta)) if np.ndim(beta) == 0 else 1.0
        self._rng = as_generator(rng)

    @property
    def n_arms(self) -> int:
        """Current number of arms."""
        return int(self._alpha.shape[0])

    def __repr__(self) -> str:
        return f"BetaBernoulliTS(n_arms={self.n_arms})"

    def posterior(self) -> tuple[FloatArray, FloatArray]:
        """Return copies of the posterior parameters.

        Returns
        -------
        alpha, beta : ndarray, shape (n_arms,)
        """
        return self._alpha.copy(), self._beta.copy()

    @overload
    def select(self, n: None = None) -> int: ...
    @overload
    def select(self, n: int) -> NDArray[np.int64]: ...

    def select(self, n: int | None = None) -> int | NDArray[np.int64]:
        """Choose arms by Thompson sampling.

        Parameters
        ----------
        n : int >= 1 or None
            None picks a single arm; an int picks ``n`` arms, each from its own
            independent posterior draw (so a batch spreads like ``n`` sequential
            calls without updates in between, rather than repeating one arm).

        Returns
        -------
        int, or ndarray of int64, shape (n,)
        """
        if n is None:
            return int(self.select(1)[0])
        n = require_count("n", n)
        draws = self._rng.beta(self._alpha, self._beta, size=(n, self.n_arms))
        return argmax_rows(draws, self._rng)

    def update(self, arms: ArrayLike, rewards: ArrayLike) -> None:
        """Add observed rewards to the posterior.

        Parameters
        ----------
        arms : int or array_like of int, shape (k,)
            Arm indices in ``[0, n_arms)``; repeats each count.
        rewards : float or array_like of float, shape (k,)
            Rewards in [0, 1]; a fractional reward r adds r to alpha and 1 - r to beta.

        Raises
        ------
        ValueError, IndexError
            On any invalid entry, in which case the posterior is left unchanged.
        """
        idx = np.atleast_1d(np.asarray(arms))
        r = np.atleast_1d(np.asarray(rewards, dtype=np.float64))
        if idx.ndim != 1 or r.ndim != 1:
            raise ValueError("arms and rewards must be scalars or 1-D arrays")
        if idx.shape != r.shape:
            raise ValueError(
                f"arms and rewards must have the same length, got {idx.size} and {r.size}"
            )
        if idx.size and idx.dtype.kind not in "iu":
            raise ValueError(f"arms must be integers, got dtype {idx.dtype}")
        bad = idx[(idx < 0) | (idx >= self.n_arms)]
        if bad.size:
            raise IndexError(f"arm index out of range for {self.n_arms} arms: {bad.tolist()}")
        if not np.all(np.isfinite(r) & (r >= 0.0) & (r <= 1.0)):
            raise ValueError(f"rewards must be finite and in [0, 1], got {r.tolist()}")
        # np.add.at, unlike fancy-index +=, applies every repeat of an arm in the batch.
        np.add.at(self._alpha, idx.astype(np.intp), r)
        np.add.at(self._beta, idx.astype(np.intp), 1.0 - r)

    def add_counts(self, successes: ArrayLike, failures: ArrayLike) -> None:
        """Add per-arm success and failure counts to the posterior in one step.

        Parameters
        ----------
        successes, failures : array_like, shape (n_arms,)
            Finite and >= 0 (fractional counts allowed).
        """
        s = np.asarray(successes, dtype=np.float64)
        f = np.asarray(failures, dtype=np.float64)
        for name, counts in (("successes", s), ("failures", f)):
            if counts.shape != (self.n_arms,):
                raise ValueError(f"{name} must have shape ({self.n_arms},), got {counts.shape}")
            if not np.all(np.isfinite(counts) & (counts >= 0.0)):
                raise ValueError(f"{name} must be finite and >= 0, got {counts.tolist()}")
        self._alpha += s
        self._beta += f

    def add_arm(self, alpha: float | None = None, beta: float | None = None) -> int:
        """Append an arm and return its index (``n_arms - 1``).

        None uses the constructor's scalar prior, or 1.0 if it was given per-arm arrays.
        """
        a = self._default_alpha if alpha is None else float(require_positive_finite("alpha", alpha))
        b = self._default_beta if beta is None else float(require_positive_finite("beta", beta))
        self._alpha = np.append(self._alpha, a)
        self._beta = np.append(self._beta, b)
        return self.n_arms - 1

    def remove_arm(self, index: int) -> None:
        """Remove arm ``index``; every arm after it shifts down by one index.

        Raises
        ------
        IndexError
            If ``index`` is not in ``[0, n_arms)`` (negative indices are rejected).
        ValueError
            If this is the last remaining arm.
        """
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise ValueError(f"index must be an int, got {index!r}")
        if not 0 <= index < self.n_arms:
            raise IndexError(f"arm index {index} out of range for {self.n_arms} arms")
        if self.n_arms == 1:
            raise ValueError("cannot remove the last arm")
        self._alpha = np.delete(self._alpha, index)
        self._beta = np.delete(self._beta, index)

    def propensities(self, n_samples: int = 10_000) -> FloatArray:
        """Monte-Carlo estimate of the probability that ``select()`` picks each arm.

        Draws from the policy's own generator, so it advances the selection stream.

        Returns
        -------
        ndarray of float64, shape (n_arms,)
            Sums to 1.
        """
        n_samples = require_count("n_samples", n_samples)
        if self.n_arms == 1:
            return np.ones(1)
        counts = np.bincount(self.select(n_samples), minlength=self.n_arms)
        return counts / n_samples
