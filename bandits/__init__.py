"""Multi-armed bandit policies and posterior summaries (numpy/scipy only)."""

from bandits import stats
from bandits.thompson import BetaBernoulliTS

__all__ = ["BetaBernoulliTS", "stats"]
