"""The arm with the highest draw, with exact ties going to a random one of the tied arms.

Continuous draws practically never tie, except at the ends: under a tiny prior Beta draws round to
exactly 0.0 or 1.0, and numpy's argmax gives every such tie to the first arm. Two variants with
identical posteriors then read probability best 0.96 and 0.04, and the first was declared the
winner. Only rows whose highest draw is exactly 0.0 or 1.0 are looked at again, so the usual case
costs one gather and two comparisons per row.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bandits._validation import FloatArray


def argmax_rows(draws: FloatArray, rng: np.random.Generator) -> NDArray[np.int64]:
    """Row-wise argmax of ``draws`` (shape (n, arms)), exact ties broken uniformly at random."""
    choice, suspect, tied = argmax_rows_untied(draws)
    if suspect.size:
        choice[suspect] = break_ties(tied, rng)
    return choice


def argmax_rows_untied(
    draws: FloatArray,
) -> tuple[NDArray[np.int64], NDArray[np.intp], NDArray[np.bool_]]:
    """The first argmax of each row; the rows that may hold an exact tie (their highest draw is
    0.0 or 1.0); and, for those rows in order, which arms hold that draw (shape (suspects, arms)).

    For a caller that breaks the ties later (stats draws in row blocks and breaks every block's
    ties after its last draw, as ``argmax_rows`` over all the rows would)."""
    choice = np.argmax(draws, axis=1).astype(np.int64)
    best = draws[np.arange(draws.shape[0]), choice]
    suspect = np.flatnonzero((best == 0.0) | (best == 1.0))
    tied = draws[suspect] == best[suspect, None]
    return choice, suspect, tied


def break_ties(tied: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.int64]:
    """For each row of ``tied`` (shape (n, arms)), one of its True arms uniformly at random.
    Rows broken in several calls draw what one call over all of them draws."""
    # A random key for each tied arm, -1 for the others: the largest key wins.
    keys = np.where(tied, rng.random(tied.shape), -1.0)
    return np.argmax(keys, axis=1).astype(np.int64)
