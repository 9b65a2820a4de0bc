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
    choice = np.argmax(draws, axis=1)
    best = draws[np.arange(draws.shape[0]), choice]
    suspect = np.flatnonzero((best == 0.0) | (best == 1.0))
    if suspect.size:
        tied = draws[suspect] == best[suspect, None]
        # A random key for each tied arm, -1 for the others: the largest key wins.
        keys = np.where(tied, rng.random(tied.shape), -1.0)
        choice[suspect] = np.argmax(keys, axis=1)
    return choice.astype(np.int64)
