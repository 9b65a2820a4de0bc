"""Prometheus metrics at GET /metrics: decisions, events, responses by status, request latency,
lifecycle actions and generation jobs.

Under gunicorn each worker counts its own requests; `copybandit serve` points prometheus_client's
multiprocess mode at a fresh folder (PROMETHEUS_MULTIPROC_DIR) before the workers fork, so one
scrape of any worker reports the sum over all of them. The metrics are created on first use, in
the worker, because prometheus_client picks its value storage from that variable at creation.
"""

from __future__ import annotations

import functools
import os
import time
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

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Every value each label can take, made at 0 up front: in multiprocess mode a label value is
# listed only once it has been counted, and an alert on, say, failed jobs saw no series at all.
EVENT_OUTCOMES = ("accepted", "duplicate", "rejected")
JOB_STATUSES = ("succeeded", "failed")  # the finished ones (service.models.JobStatus)
# The actions a lifecycle pass counts (service.lifecycle.apply_segment): every audit action but
# "prior", which is recorded when copy is added, outside a pass.
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
        m = metrics()
        m.responses.labels(str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None and request.url_rule is not None:
            m.latency.labels(request.url_rule.rule).observe(time.perf_counter() - started)
        return response

    def scrape() -> Response:
        metrics()  # so a scrape before any request still lists every metric
        return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)

    # A plain Flask rule, like "/": not part of the JSON API's OpenAPI document.
    app.add_url_rule("/metrics", "metrics", scrape)
