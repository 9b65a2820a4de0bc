"""Thompson choices one decision at a time, drawn a block at a time.

A service decides once per request, and one ``Generator.beta`` call on a 10-vector costs ~25 µs
of call overhead against ~1 µs of actual sampling. Drawing a block of decisions in one call and
handing them out one by one keeps every decision its own independent posterior draw, at the
batched cost. The price is staleness: updates reported between refills reach the posterior at the
next refill, so a block is drawn from the posterior as of its start. Blocks start small and double,
so a quiet segment never pays for draws it will not use.

Each choice carries its propensity: the share of its refill's draws that its arm won. Draws are
independent, so given a refill's draws every one of them is equally likely to be any decision's, and
that share is exactly the probability the decision had of being that arm, as importance-weighting
estimators need it, however far the posterior has moved since it was loaded. (A Monte-Carlo
estimate made once at load time described the loaded posterior, not the one a later block was
drawn from after this worker's own impressions had been added: at a 5 s reload interval, one arm's
recorded propensity read 0.68 where it was served 0.55 of the time.) A refill draws at least
``propensity_draws`` so that small blocks still see the rarer arms; an arm that wins none of them
cannot be chosen from that block, which keeps every recorded propensity above 0.

Threads: handing out a choice is a `list.pop`, atomic in CPython, so it takes no lock; only a refill
(which runs numpy's Generator, not thread-safe) takes `lock`, which samplers sharing a Generator
must share too.
"""

from __future__ import annotations

import threading

import numpy as np

from bandits._validation import require_count
from bandits.thompson import BetaBernoulliTS


class BlockSampler:
    """Hands out ``policy``'s Thompson choices singly, drawing them in blocks.

    Parameters
    ----------
    policy : BetaBernoulliTS
        The posterior to draw from; updates go through ``update`` here, applied at each refill.
    first_block, max_block : int
        The first refill draws ``first_block`` decisions; each later one twice the last, up to
        ``max_block``.
    lock : threading.Lock or None
        Held while refilling; pass the same lock to every sampler whose policy shares a Generator.
    propensity_draws : int
        Each refill draws at least this many decisions and hands out the first ``block`` of them;
        the rest only sharpen the propensities. Above ``max_block`` every refill wastes draws.
    """

    def __init__(
        self,
        policy: BetaBernoulliTS,
        first_block: int = 8,
        max_block: int = 1024,
        lock: threading.Lock | None = None,
        propensity_draws: int = 1,
    ) -> None:
        self.policy = policy
        self._lock = lock or threading.Lock()
        self._next_block = require_count("first_block", first_block)
        self._max_block = require_count("max_block", max_block)
        if self._max_block < self._next_block:
            raise ValueError(f"max_block must be >= first_block, got {max_block} < {first_block}")
        self._propensity_draws = require_count("propensity_draws", propensity_draws)
        self._n_arms = policy.n_arms
        # (arm, propensity) pairs: one pop hands out both, so a refill by another thread in
        # between cannot pair a choice with another block's propensities.
        self._choices: list[tuple[int, float]] = []
        # Plain lists: a per-decision increment on a numpy array costs more than the draw.
        self._pending_trials = [0.0] * self._n_arms
        self._pending_successes = [0.0] * self._n_arms

    def select(self) -> int:
        """The next arm; one independent posterior draw per call."""
        return self.choose()[0]

    def choose(self) -> tuple[int, float]:
        """The next arm, and the probability it had of being chosen (see the module's text)."""
        try:
            return self._choices.pop()
        except IndexError:
            with self._lock:
                if not self._choices:
                    self._refill()
                return self._choices.pop()

    def update(self, arm: int, reward: float) -> None:
        """Record a trial of ``arm`` with ``reward`` in [0, 1]; it reaches the posterior at the
        next refill."""
        if not 0 <= arm < self._n_arms:
            raise IndexError(f"arm index out of range for {self._n_arms} arms: {arm}")
        if not 0.0 <= reward <= 1.0:
            raise ValueError(f"reward must be in [0, 1], got {reward!r}")
        # Unlocked: two threads racing here can lose one local count, which only delays that
        # trial until the posterior is next reloaded from the database's exact counters.
        self._pending_trials[arm] += 1.0
        if reward:
            self._pending_successes[arm] += reward

    def _refill(self) -> None:
        if any(self._pending_trials):
            trials = np.array(self._pending_trials)
            successes = np.array(self._pending_successes)
            self.policy.add_counts(successes, trials - successes)
            self._pending_trials = [0.0] * self._n_arms
            self._pending_successes = [0.0] * self._n_arms
        block = self._next_block
        self._next_block = min(self._max_block, block * 2)
        draws = self.policy.select(max(block, self._propensity_draws))
        shares = np.bincount(draws, minlength=self._n_arms) / len(draws)
        # One shared pair per arm: building a pair per decision cost more than the draw.
        pairs = list(enumerate(shares.tolist()))
        self._choices = [pairs[arm] for arm in draws[:block].tolist()]
