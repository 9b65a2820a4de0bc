"""Prometheus metrics at GET /metrics: decisions, events, responses by status, request latency,
lifecycle actions and generation jobs.

Under gunicorn each worker counts its own requests; `copybandit serve` points prometheus_client's
multiprocess mode at a fresh folder (PROMETHEUS_MULTIPROC_DIR) before the workers fork, so one
scrape of any worker reports the sum over all of them. The metrics are created on first use, in
the worker, because prometheus_client picks its value storage from that variable at creation.

Everything counted is counted through `count`, after the work it counts is done: a folder that
cannot be written costs the counts, never the request or the pass.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from service.errors import ServiceUnavailable

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Every value each label can take, made at 0 up front: in multiprocess mode a label value is
# listed only once it has been counted, and an alert on, say, failed jobs saw no series at all.
EVENT_OUTCOMES = ("accepted", "duplicate", "rejected")
JOB_STATUSES = ("succeeded", "failed", "cancelled")  # the finished ones (service.models.JobStatus)
# The actions a lifecycle pass counts (service.lifecycle.apply_segment): every audit action but
# those recorded outside a pass: "prior" when copy is added, "edit" when a marketer edits a
# brief, "hold" by the job that found its brief too long (a pass writes one only where that job
# ended unfinished, and its series appears then).
LIFECYCLE_ACTIONS = ("pause", "retire", "declare_winner", "regenerate", "discount")


@dataclass(frozen=True)
class Metrics:
    decisions: Counter
    events: Counter
    responses: Counter
    latency: Histogram
    lifecycle_actions: Counter
    generation_jobs: Counter


@functools.cache
def metrics() -> Metrics:
    if os.environ.get(MULTIPROC_ENV):
        # Imported before the variable was set (the CLI imports everything): choose again.
        values.ValueClass = values.get_value_class()
    created = Metrics(
        decisions=Counter("copybandit_decisions", "Impressions recorded by POST /v1/decide"),
        events=Counter(
            "copybandit_events", "Conversion events: accepted, duplicate, rejected", ["outcome"]
        ),
        responses=Counter("copybandit_http_responses", "HTTP responses by status code", ["code"]),
        latency=Histogram(
            "copybandit_request_seconds",
            "Time to answer, by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        ),
        lifecycle_actions=Counter(
            "copybandit_lifecycle_actions", "Lifecycle actions applied", ["action"]
        ),
        generation_jobs=Counter(
            "copybandit_generation_jobs", "Generation jobs finished, by status", ["status"]
        ),
    )
    for counter, labels in (
        (created.events, EVENT_OUTCOMES),
        (created.generation_jobs, JOB_STATUSES),
        (created.lifecycle_actions, LIFECYCLE_ACTIONS),
    ):
        for label in labels:
            counter.labels(label)
    return created


def count(update: Callable[[Metrics], object]) -> None:
    """Apply `update` to the metrics, or log why it could not be and carry on.

    Each count follows work already committed: a decision stored, events recorded, a pass's
    actions applied. With the metrics folder removed under a running server, or its disk full,
    every count raised, so a stored decision answered 500 and its client's retry stored a second
    impression.
    """
    try:
        update(metrics())
    except Exception as exc:
        _failures.report(exc)


class _FailureLog:
    """One warning a minute per process: a folder that fails one count fails them all, and a line
    per request buried everything else the log said."""

    INTERVAL_SECONDS = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None
        self._since = 0

    def report(self, exc: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.INTERVAL_SECONDS:
                self._since += 1
                return
            unreported, self._since, self._last = self._since, 0, now
        more = f"; {unreported} more failed since the last such line" if unreported else ""
        log.warning(
            "metrics not recorded, in %s: %s: %s (the work they count is done)%s",
            os.environ.get(MULTIPROC_ENV) or "this process's memory",
            type(exc).__name__,
            exc,
            more,
        )


_failures = _FailureLog()


def _registry() -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY


def init_app(app: Flask) -> None:
    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("metrics_started")
        rule = request.url_rule

        def observe(m: Metrics) -> None:
            m.responses.labels(str(response.status_code)).inc()
            if started is not None and rule is not None:
                m.latency.labels(rule.rule).observe(time.perf_counter() - started)

        count(observe)
        return response

    def scrape() -> Response:
        try:
            metrics()  # so a scrape before any request still lists every metric
            # A worker whose metrics were made before its folder was removed counts on into
            # files no scrape can read, and reading the folder raises here: it answered 500,
            # with a traceback at every scrape.
            text = generate_latest(_registry())
        except Exception as exc:
            # A scrape that answered with the counts it could read would hide that this worker
            # counts nothing: the target's `up` goes to 0 instead.
            _failures.report(exc)
            raise ServiceUnavailable(
                f"this worker cannot record its metrics: {type(exc).__name__}: {exc}"
            ) from None
        # As content_type, which is sent as given: as mimetype, a text/ type gets Flask's charset
        # appended to the one CONTENT_TYPE_LATEST has, and Prometheus 3 fails a scrape whose
        # Content-Type names a parameter twice.
        return Response(text, content_type=CONTENT_TYPE_LATEST)

    # A plain Flask rule, like "/": not part of the JSON API's OpenAPI document.
    app.add_url_rule("/metrics", "metrics", scrape)
