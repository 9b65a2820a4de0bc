"""Simulated worlds: segments of traffic, their copy variants and hidden true conversion rates.

A world is read from a scenario (a JSON or YAML file, or a dict). Each segment either has fixed
true rates ("plain" mode) or a hidden :class:`ResponseModel` that turns copy text into a true rate,
so newly written copy can genuinely be better or worse than what it replaces.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bandits._validation import FloatArray

__all__ = ["Drift", "ResponseModel", "Segment", "World", "load_scenario"]

PLAIN_FEATURES = ("mentions_price", "exclamation", "length_per_100_chars")
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_TOP_KEYS = {"name", "description", "impressions", "seeds", "batch", "segments", "delay", "drift"}
_SEGMENT_KEYS = {"key", "share", "response", "rates", "variants"}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite number (bool excluded), else None.

    JSON integers have no size limit, and ``math.isfinite(10**400)`` raises OverflowError rather
    than answering.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two; a scenario that gives a segment "rates" twice meant one of them.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"field {_shown(key)} is given twice in one object")
        result[key] = value
    return result


def _shown(value: Any) -> str:
    """`value` as an error message quotes it: cut short, so a long string or a large list (a YAML
    alias repeated into millions of entries, a file's worth of JSON) does not become the message."""
    return _SHORT_REPR.repr(value)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict = 3, 6, 6
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60


YAML_SUFFIXES = (".yaml", ".yml")
# What a YAML scenario may come to once its aliases are written out in full, in characters: far
# above any scenario a person writes, far below what nine nested aliases of nine make of 1 KB.
_MAX_YAML_WRITTEN_OUT = 10**7


def _read_file(path: Path) -> Any:
    """A scenario file's contents: YAML for a .yaml or .yml name, JSON otherwise."""
    language = "YAML" if path.suffix.lower() in YAML_SUFFIXES else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        return _parse_yaml(text) if language == "YAML" else _parse_json(text)
    except RecursionError:  # a few thousand nested brackets: a traceback from the parser
        raise ValueError(f"{path}: {language} nested too deeply to read") from None
    except ValueError as exc:  # a key given twice, bytes that are not UTF-8, a syntax error
        raise ValueError(f"{path}: {exc}") from None


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def _parse_yaml(text: str) -> Any:
    # Imported here: only a YAML scenario needs it, and the bandits themselves are numpy alone.
    import yaml

    class _Loader(yaml.SafeLoader):
        """Safe YAML (no object tags), and a key given twice is refused as in JSON: PyYAML keeps
        the last one. Merge keys (`<<: *base`) share fields between mappings: a field the mapping
        gives itself overrides a merged one, as YAML means, and of several merged mappings
        (`<<: [*a, *b]`) the first to give a field wins."""

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            pairs = []
            merged: dict[Any, Any] = {}
            merges = 0
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    merges += 1
                    if merges > 1:  # PyYAML takes a second `<<` too; it is a key given twice
                        line = key_node.start_mark.line + 1
                        raise ValueError(
                            f"merge key << is given twice in one mapping (line {line}); "
                            "merge several as <<: [*a, *b]"
                        )
                    for source in self._merged(value_node):
                        for key, value in source.items():
                            merged.setdefault(key, value)
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    # `1: x` or `on: x` (a boolean in YAML 1.1): no field has such a name.
                    line = key_node.start_mark.line + 1
                    raise ValueError(f"field names must be text, got {_shown(key)} (line {line})")
                pairs.append((key, self.construct_object(value_node, deep=True)))
            return {**merged, **_no_duplicate_keys(pairs)}

        def _merged(self, node: Any) -> list[dict[Any, Any]]:
            """The mappings a merge key names, each built (and checked) as any mapping is."""
            nodes = node.value if node.id == "sequence" else [node]
            if not all(item.id == "mapping" for item in nodes):
                line = node.start_mark.line + 1
                raise ValueError(
                    f"merge key << takes a mapping or a list of mappings (line {line})"
                )
            return [self.construct_object(item, deep=True) for item in nodes]

        def get_single_data(self) -> Any:
            # Nine nested lists of nine aliases to the one before ("billion laughs") build small,
            # as the values share what an alias names; but a message that shows a field's value
            # writes it out in full, gigabytes of it. So it is measured here, before building.
            node = self.get_single_node()
            if node is None:
                return None
            if _written_out(node, {}) > _MAX_YAML_WRITTEN_OUT:
                raise ValueError(
                    f"its aliases (*name) write out to more than {_MAX_YAML_WRITTEN_OUT:,} "
                    "characters; repeat less through them"
                )
            return self.construct_document(node)

    # YAML 1.1, which PyYAML reads, takes a float only with a dot, and an exponent only with a
    # sign: `1e-3` and `1.5e2` were text, and a number JSON takes was refused in YAML. (Added to
    # _Loader's own copy of the table.)
    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {' '.join(str(exc).split())}") from None


# A number with an exponent, as JSON (and YAML 1.2) writes one: 1e-3, 2E5, -5e+2, 1.5e2, .5e1.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


def _written_out(node: Any, sizes: dict[int, int]) -> int:
    """About how many characters YAML `node` comes to with every alias written out in full."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    # A node inside itself (`&a [*a]`) counts once; building it is refused as recursive.
    sizes[id(node)] = 0
    # PyYAML's node kinds, by the name each class carries ("scalar", "sequence", "mapping").
    if node.id == "scalar":
        size = len(node.value) + 2
    elif node.id == "mapping":
        size = 2 + sum(_written_out(k, sizes) + _written_out(v, sizes) for k, v in node.value)
    else:
        size = 2 + sum(_written_out(item, sizes) for item in node.value)
    sizes[id(node)] = size
    return size


def _sigmoid(x: float) -> float:
    # Two branches so neither exp() can overflow.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class ResponseModel:
    """Hidden map from copy text to a true conversion probability.

    ``rate(text) = sigmoid(logit(base_rate) + sum_k weights[k] * features(text)[k])``.

    Feature names are ``word:<w>`` (1.0 if the lower-cased word ``w`` occurs as a whole word;
    words are runs of letters and digits joined by inner apostrophes or hyphens, so ``all-day``
    is one word),
    ``mentions_price`` (1.0 if the text has a ``$`` or a digit), ``exclamation`` (1.0 if it has a
    ``!``) and ``length_per_100_chars`` (``len(text) / 100``).

    Parameters
    ----------
    base_rate : float in (0, 1)
        The rate of copy whose features are all zero.
    weights : mapping of str to float
        Log-odds weight per feature name.
    """

    base_rate: float
    weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.base_rate, int | float) and 0.0 < self.base_rate < 1.0):
            raise ValueError(f"base_rate must be in (0, 1), got {_shown(self.base_rate)}")
        for name, weight in self.weights.items():
            _check_feature_name(name, "weights")
            if _finite(weight) is None:
                raise ValueError(
                    f"weights[{_shown(name)}] must be a finite number, got {_shown(weight)}"
                )

    def features(self, text: str) -> dict[str, float]:
        """Value of every feature this model weighs, for ``text``.

        Returns
        -------
        dict of str to float
            One entry per key of ``weights``.
        """
        lowered = text.lower()
        words = set(_WORD.findall(lowered))
        out: dict[str, float] = {}
        for name in self.weights:
            if name.startswith("word:"):
                out[name] = 1.0 if name[5:].lower() in words else 0.0
            elif name == "mentions_price":
                out[name] = 1.0 if ("$" in text or any(c.isdigit() for c in text)) else 0.0
            elif name == "exclamation":
                out[name] = 1.0 if "!" in text else 0.0
            else:  # length_per_100_chars (names were checked on construction)
                out[name] = len(text) / 100.0
        return out

    def rate(self, text: str) -> float:
        """True conversion probability of ``text``, in (0, 1).

        Raises
        ------
        ValueError
            When weights that are each finite add up to no number for ``text`` (one sum
            overflows to +inf, another to -inf).
        """
        score = _logit(self.base_rate)
        for name, value in self.features(text).items():
            score += float(self.weights[name]) * value
        if math.isnan(score):
            raise ValueError(f"the weights give {_shown(text)} no rate: their sum is not a number")
        return _sigmoid(score)

    def rates(self, texts: Sequence[str]) -> FloatArray:
        """True rates of several texts, shape (len(texts),)."""
        return np.array([self.rate(t) for t in texts], dtype=np.float64)


def _check_feature_name(name: object, where: str) -> None:
    ok = isinstance(name, str) and (
        name in PLAIN_FEATURES or (name.startswith("word:") and len(name) > 5)
    )
    if not ok:
        raise ValueError(
            f"{where}: unknown feature {_shown(name)}; use 'word:<word>', "
            f"or one of {', '.join(PLAIN_FEATURES)}"
        )
    # A word the text is never split into ('all day', 'café') would weigh nothing, silently.
    if isinstance(name, str) and name.startswith("word:") and not _WORD.fullmatch(name[5:].lower()):
        raise ValueError(
            f"{where}: feature {_shown(name)} can never match; a word is letters a-z and digits, "
            "joined by inner apostrophes or hyphens"
        )


@dataclass(frozen=True, eq=False)  # holds ndarrays: compare by identity
class Segment:
    """One slice of traffic with its own arms.

    Attributes
    ----------
    key : str
    share : float
        Fraction of all impressions, normalised so a world's shares sum to 1.
    variants : tuple of str, length n_arms
        Copy text (or a generated label in plain mode without texts).
    rates : ndarray of float64, shape (n_arms,)
        True conversion rate of each variant before any drift.
    response : ResponseModel or None
        The hidden model that produced ``rates``; None in plain mode.
    """

    key: str
    share: float
    variants: tuple[str, ...]
    rates: FloatArray
    response: ResponseModel | None = None

    @property
    def n_arms(self) -> int:
        """Number of variants."""
        return len(self.variants)


@dataclass(frozen=True, eq=False)  # holds ndarrays: compare by identity
class Drift:
    """A one-off change of true rates part-way through a run.

    Attributes
    ----------
    at_fraction : float in (0, 1)
        Fraction of the run's impressions after which the new rates apply; the change takes
        effect at the first batch boundary at or after that point.
    rates : dict of int to ndarray, shape (n_arms,)
        New true rates by segment index; segments not named keep their rates.
    """

    at_fraction: float
    rates: dict[int, FloatArray]


@dataclass(frozen=True, eq=False)  # holds ndarrays: compare by identity
class World:
    """A scenario ready to simulate. Build one with :func:`load_scenario`.

    Attributes
    ----------
    name, description : str
    impressions, seeds, batch : int
        Defaults for a run: total impressions, number of seeds, impressions per batch.
    segments : tuple of Segment
    delay_mean : float
        Mean (exponential) delay, in impressions, before an impression's outcome is known;
        0 means outcomes are known at once.
    drift : Drift or None
    """

    name: str
    description: str
    impressions: int
    seeds: int
    batch: int
    segments: tuple[Segment, ...]
    delay_mean: float = 0.0
    drift: Drift | None = None

    @property
    def shares(self) -> FloatArray:
        """Traffic share of each segment, shape (n_segments,), summing to 1."""
        return np.array([s.share for s in self.segments], dtype=np.float64)

    def rates(self, drifted: bool = False) -> list[FloatArray]:
        """True rates of every segment, before (or after) the drift.

        Returns
        -------
        list of ndarray, one of shape (n_arms,) per segment
        """
        out = [s.rates.copy() for s in self.segments]
        if drifted and self.drift is not None:
            for i, r in self.drift.rates.items():
                out[i] = r.copy()
        return out

    def check_run_size(
        self, *, impressions: int, batch: int, seeds: int, batch_given: bool = False
    ) -> None:
        """Raise ValueError, naming the field, for a run too large to hold in memory.

        Called before anything is allocated: such runs otherwise failed deep inside the
        simulator (a 14.6 TiB draw, or a MemoryError listing the seeds). `batch_given` says the
        caller passed the batch; otherwise it is the scenario's.
        """
        most_arms = max(seg.n_arms for seg in self.segments)
        if batch * most_arms > MAX_BATCH_DRAWS:
            raise ValueError(
                f"batch must be at most {MAX_BATCH_DRAWS // most_arms:,} for a segment of "
                f"{most_arms} variants (a batch draws batch x variants numbers at once), "
                f"got {batch:,}"
            )
        batches = math.ceil(impressions / batch)
        row = 4 + len(self.segments) + sum(seg.n_arms for seg in self.segments)
        if seeds * batches * row > MAX_TRACE_NUMBERS:
            # A larger batch is suggested only where one that the draws allow makes the run fit.
            # Without `batch_given` the batch is the scenario's: `copybandit simulate` has no
            # option for it, and "a larger batch" sent users looking for one.
            advice = "use fewer seeds or impressions"
            most_batches = MAX_TRACE_NUMBERS // (seeds * row)
            least = math.ceil(impressions / most_batches) if most_batches else None
            most = MAX_BATCH_DRAWS // most_arms
            if least is not None and least <= most:
                where = "batch" if batch_given else '"batch" (the scenario\'s)'
                advice += f", or a larger {where}: from {least:,} to {most:,} for this world"
            raise ValueError(
                f"seeds x batches (impressions / batch) must be at most "
                f"{MAX_TRACE_NUMBERS // row:,} for this world (a comparison keeps {row} numbers "
                f"per batch of every seed's run), got {seeds:,} x {batches:,}; {advice}"
            )

    def outside_response_models(self) -> list[str]:
        """The fields a run of response models alone leaves out (HTTP and full-loop modes):
        segments of fixed rates by key, a drift and a delay; empty when it leaves out nothing."""
        fixed = [s.key for s in self.segments if s.response is None]
        left_out = [f"fixed-rate segment(s) {', '.join(map(_shown, fixed))}"] if fixed else []
        if self.drift is not None:
            left_out.append("drift")
        if self.delay_mean > 0:
            left_out.append(f"delay (mean {self.delay_mean:g} impressions)")
        return left_out

    def drift_batch(self, impressions: int, batch: int) -> int | None:
        """Index of the first batch that sees drifted rates in a run of this length, or None."""
        if self.drift is None:
            return None
        first = math.ceil(self.drift.at_fraction * impressions / batch)
        return first if first * batch < impressions else None


# ---------------------------------------------------------------------------------------------
# Loading and validation


# Far beyond any run this machine finishes, and within numpy's 64-bit integers (a batch of 10**22
# loaded, then failed deep in the simulator with an OverflowError).
_MAX_COUNT = 10**12
# Memory, not time, bounds the rest (see World.check_run_size): a batch's policy draws
# (Thompson sampling draws batch x arms numbers at once) and the traces a comparison keeps until
# it summarises them, 80 MB and 800 MB of float64.
MAX_BATCH_DRAWS = 10**7
MAX_TRACE_NUMBERS = 10**8


def _int_field(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_COUNT:
        raise ValueError(f"{key} must be an integer from 1 to {_MAX_COUNT:,}, got {_shown(value)}")
    return value


def _rates_field(value: object, where: str) -> FloatArray:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of rates, got {_shown(value)}")
    for j, r in enumerate(value):
        ok = isinstance(r, int | float) and not isinstance(r, bool) and 0.0 <= r <= 1.0
        if not ok:
            raise ValueError(f"{where}[{j}] must be a number in [0, 1], got {_shown(r)}")
    return np.array(value, dtype=np.float64)


def _object(value: object, where: str, allowed: set[str]) -> dict[str, Any]:
    """`value` as a JSON object with no fields outside `allowed`; errors name `where`."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object, got {_shown(value)}")
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    return value


def _response_field(value: object, where: str) -> ResponseModel:
    value = _object(value, where, {"base_rate", "weights"})
    base = value.get("base_rate")
    if isinstance(base, bool) or not isinstance(base, int | float) or not 0.0 < base < 1.0:
        raise ValueError(f"{where}.base_rate must be a number in (0, 1), got {_shown(base)}")
    weights = value.get("weights", {})
    if not isinstance(weights, dict):
        raise ValueError(f"{where}.weights must be an object, got {_shown(weights)}")
    for name, w in weights.items():
        _check_feature_name(name, f"{where}.weights")
        if _finite(w) is None:
            raise ValueError(
                f"{where}.weights[{_shown(name)}] must be a finite number, got {_shown(w)}"
            )
    return ResponseModel(float(base), {str(k): float(v) for k, v in weights.items()})


def _segment(raw: object, i: int) -> Segment:
    where = f"segments[{i}]"
    raw = _object(raw, where, _SEGMENT_KEYS)
    key = raw.get("key")
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"{where}.key must be a non-empty string, got {_shown(key)}")
    share = _finite(raw.get("share", 1.0))
    if share is None or share <= 0:
        shown = _shown(raw.get("share"))
        raise ValueError(f"{where}.share must be a finite number > 0, got {shown}")
    variants = raw.get("variants")
    if variants is not None and (
        not isinstance(variants, list)
        or not variants
        or not all(isinstance(v, str) and v.strip() for v in variants)
    ):
        raise ValueError(f"{where}.variants must be a non-empty list of non-empty strings")
    has_response, has_rates = "response" in raw, "rates" in raw
    if has_response == has_rates:
        raise ValueError(f"{where} needs exactly one of 'response' or 'rates'")
    response: ResponseModel | None = None
    if has_response:
        response = _response_field(raw["response"], f"{where}.response")
        if variants is None:
            raise ValueError(f"{where}.variants is required with a response model")
        rates = _response_rates(response, variants, f"{where}.response")
    else:
        rates = _rates_field(raw["rates"], f"{where}.rates")
        if variants is None:
            variants = [f"arm {j}" for j in range(rates.size)]
        elif len(variants) != rates.size:
            raise ValueError(
                f"{where}.variants has {len(variants)} entries but {where}.rates has {rates.size}"
            )
    return Segment(key, share, tuple(variants), rates, response)


def _response_rates(response: ResponseModel, variants: Sequence[str], where: str) -> FloatArray:
    try:
        return response.rates(variants)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _drift(raw: object, segments: list[Segment]) -> Drift:
    raw = _object(raw, "drift", {"at_fraction", "segments"})
    at = raw.get("at_fraction")
    if isinstance(at, bool) or not isinstance(at, int | float) or not 0.0 < at < 1.0:
        raise ValueError(f"drift.at_fraction must be a number in (0, 1), got {_shown(at)}")
    changes = raw.get("segments")
    if not isinstance(changes, dict) or not changes:
        raise ValueError("drift.segments must be a non-empty object keyed by segment key")
    index = {s.key: i for i, s in enumerate(segments)}
    rates: dict[int, FloatArray] = {}
    for key, change in changes.items():
        where = f"drift.segments[{_shown(key)}]"
        if key not in index:
            raise ValueError(f"{where}: no segment has key {_shown(key)}")
        seg = segments[index[key]]
        if (
            not isinstance(change, dict)
            or len(change) != 1
            or not {"rates", "response"} & set(change)
        ):
            raise ValueError(f"{where} must be an object with exactly one of 'rates' or 'response'")
        if "rates" in change:
            new = _rates_field(change["rates"], f"{where}.rates")
        else:
            response = _response_field(change["response"], f"{where}.response")
            new = _response_rates(response, seg.variants, f"{where}.response")
        if new.size != seg.n_arms:
            raise ValueError(
                f"{where}.rates has {new.size} entries but the segment has {seg.n_arms}"
            )
        rates[index[key]] = new
    return Drift(float(at), rates)


def load_scenario(source: str | Path | Mapping[str, Any]) -> World:
    """Read and validate a scenario.

    Parameters
    ----------
    source : str, Path or mapping
        A path to a JSON file (YAML when its name ends in .yaml or .yml), or the
        already-parsed scenario.

    Returns
    -------
    World
        Segment shares normalised to sum to 1.

    Raises
    ------
    ValueError
        Naming the offending field, e.g. ``"segments[1].share must be a finite number > 0,
        got 0"``.
    """
    default_name = "scenario"
    if isinstance(source, str | Path):
        path = Path(source)
        default_name = path.stem
        raw: Any = _read_file(path)
    else:
        raw = dict(source)
    if not isinstance(raw, dict):
        raise ValueError("a scenario must be an object of fields (a JSON object, a YAML mapping)")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}"
        )
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {_shown(name)}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"description must be a string, got {_shown(description)}")
    impressions = _int_field(raw, "impressions", 200_000)
    seeds = _int_field(raw, "seeds", 10)
    batch = _int_field(raw, "batch", 100)
    raw_segments = raw.get("segments")
    if not isinstance(raw_segments, list) or not raw_segments:
        raise ValueError("segments must be a non-empty list")
    segments = [_segment(s, i) for i, s in enumerate(raw_segments)]
    seen: set[str] = set()
    for i, seg in enumerate(segments):
        if seg.key in seen:
            raise ValueError(f"segments[{i}].key {_shown(seg.key)} is used by an earlier segment")
        seen.add(seg.key)
    # Scaled by the largest first: two shares of 1e308 summed to inf and both normalised to 0.
    largest = max(s.share for s in segments)
    total = sum(s.share / largest for s in segments)
    segments = [
        Segment(s.key, s.share / largest / total, s.variants, s.rates, s.response) for s in segments
    ]
    delay_mean = 0.0
    delay = raw.get("delay")
    if delay is not None:
        if not isinstance(delay, dict) or set(delay) - {"mean_impressions"}:
            raise ValueError("delay must be an object with only 'mean_impressions'")
        mean = _finite(delay.get("mean_impressions", 0))
        if mean is None or mean < 0:
            raise ValueError(
                "delay.mean_impressions must be a finite number >= 0, "
                f"got {_shown(delay.get('mean_impressions'))}"
            )
        delay_mean = mean
    drift = None if raw.get("drift") is None else _drift(raw["drift"], segments)
    world = World(
        name=name,
        description=description,
        impressions=impressions,
        seeds=seeds,
        batch=batch,
        segments=tuple(segments),
        delay_mean=delay_mean,
        drift=drift,
    )
    world.check_run_size(impressions=impressions, batch=batch, seeds=seeds)
    return world
