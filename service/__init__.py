"""copybandit's service: HTTP API, persistence and serving state, wired by `create_app`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta

from flask import Response
from flask_openapi3 import Info, OpenAPI
from werkzeug.middleware.proxy_fix import ProxyFix

from service import (
    api,
    dashboard,
    db,
    errors,
    hourly_traffic,
    jsonbody,
    logs,
    marketers,
    metrics,
    write_health,
)
from service.auth import KeyCache
from service.config import Settings, load_settings
from service.errors import validation_error_response
from service.generation_jobs import JobRunner
from service.lifecycle import GuardrailWatch, scheduled_pass
from service.ratelimit import RateLimiter
from service.scheduler import PeriodicJob, start_background
from service.snapshot import SnapshotCache

__all__ = ["create_app", "preload"]


class _App(OpenAPI):
    def make_default_options_response(self) -> Response:
        """An OPTIONS request's answer: the methods the address takes (Allow), and no body. Flask's
        own is a 200 with an empty text/html body."""
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def preload() -> None:
    """What the app's requests need made or imported before the first one comes, left out of
    the package's import because `copybandit`'s commands (service.cli is in this package) do not.

    create_app calls it; `serve` calls it once in gunicorn's master, before the workers fork.
    """
    # bandits.stats imports it when a report is first asked for (0.3 s).
    import scipy.special  # noqa: F401

    # Made at the first sign-in with an unknown email, it would slow that one: a difference in
    # time that tells an unknown address from a known one.
    marketers.decoy_hash()


def create_app(config: Mapping[str, object] | None = None) -> OpenAPI:
    """Build an app from defaults, `COPYBANDIT_*` variables and `config`; no global state."""
    settings: Settings = load_settings(config).validate()
    preload()
    logs.configure(settings.log_level, settings.log_format)
    app = _App(
        __name__,
        info=Info(
            title="copybandit",
            version="1",
            description="Thompson-sampling decisions over LLM-written marketing copy.",
        ),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        validation_error_status=400,
        validation_error_callback=validation_error_response,
        doc_ui=False,
    )
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        # Flask's own 500,000 bytes a form field refused a multipart form under the limit (and,
        # before werkzeug 3.1.9, the review queue's own), a 413 saying it was over the limit.
        MAX_FORM_MEMORY_SIZE=settings.max_request_bytes,
        SECRET_KEY=settings.secret_key,
    )
    if settings.trusted_proxies:
        # The client's address (what the sign-in limits count by) from the header the nearest
        # proxy wrote; nothing else it forwards is taken on trust.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=0, x_host=0, x_port=0
        )
    app.extensions["copybandit.settings"] = settings
    app.extensions["copybandit.snapshots"] = SnapshotCache(
        ttl_seconds=settings.snapshot_ttl_seconds,
        propensity_draws=settings.propensity_samples,
    )
    app.extensions["copybandit.keys"] = KeyCache(settings.key_cache_seconds)
    app.extensions["copybandit.ratelimit"] = RateLimiter(
        settings.rate_limit_per_second, settings.rate_limit_burst
    )
    db.init_app(app, settings)
    write_health.init_app(app)
    jobs = JobRunner(engine=app.extensions["copybandit.engine"], settings=settings)
    app.extensions["copybandit.jobs"] = jobs
    app.extensions["copybandit.guardrail"] = GuardrailWatch(app.extensions["copybandit.engine"])
    if settings.scheduler == "on":
        lifecycle = PeriodicJob(
            app.extensions["copybandit.engine"],
            name="lifecycle",
            interval_seconds=settings.lifecycle_interval_seconds,
            job=lambda: scheduled_pass(
                engine=app.extensions["copybandit.engine"],
                model=settings.model,
                submit_job=jobs.submit,
                interval=timedelta(seconds=settings.lifecycle_interval_seconds),
            ),
        )
        # Its own job, not a step of the lifecycle's pass: the charts count live the rows of
        # hours not yet counted, and the lifecycle's interval may be a day.
        hourly = PeriodicJob(
            app.extensions["copybandit.engine"],
            name="hourly_traffic",
            interval_seconds=hourly_traffic.INTERVAL.total_seconds(),
            job=lambda: hourly_traffic.count_hours(engine=app.extensions["copybandit.engine"]),
            # It logs a line where it counted hours, once an hour at most while it keeps up.
            slot_log_level=logging.DEBUG,
        )
        app.extensions["copybandit.scheduler"] = start_background(lifecycle, hourly)
    jsonbody.init_app(app)
    errors.register(app)
    api.register(app)
    dashboard.register(app, settings)
    metrics.init_app(app)
    return app
