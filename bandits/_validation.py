"""Argument checks shared by the policy and the posterior summaries.

Kept in one place so ``thompson`` and ``stats`` reject bad input with the
same wording, and so neither module carries a copy of the other's checks.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

RNGLike: TypeAlias = np.random.Generator | int | None
FloatArray: TypeAlias = NDArray[np.float64]


def require_count(name: str, value: object) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1, else raise ValueError."""
    # bool is an int subclass; select(True) is almost certainly a bug, not "1".
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def require_positive_finite(name: str, values: ArrayLike) -> FloatArray:
    """Return ``values`` as float64, raising ValueError unless every entry is finite and > 0.

    Returns
    -------
    ndarray, same shape as ``values``
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except OverflowError:
        # A Python int has no size limit, and 10**400 has no float to become.
        raise ValueError(f"{name} must be finite and > 0, got {values!r}") from None
    # Beta(a, b) is undefined for a <= 0 and NaN would silently poison every draw.
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"{name} must be finite and > 0, got {values!r}")
    return arr


def as_generator(rng: RNGLike) -> np.random.Generator:
    """Turn a Generator, an int seed or None into a Generator (a Generator is used as-is)."""
    seed_like = isinstance(rng, int | np.integer) and not isinstance(rng, bool)
    if not (rng is None or seed_like or isinstance(rng, np.random.Generator)):
        raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {rng!r}")
    return np.random.default_rng(rng)
