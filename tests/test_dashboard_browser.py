"""The marketer dashboard in a real browser: Playwright drives Debian's Chromium against the app
served over HTTP by werkzeug, on a migrated SQLite file seeded with the service's own functions.

One server and one browser serve the whole module. Every test gets a browser context of its own:
the sign-in tests start signed out and use the form; the rest start with the cookies of one
module-wide sign-in through the same form. Tests that change state make an experiment of their
own, so no test depends on another's order. The screenshot lands in var/screenshots/.
"""

from __future__ import annotations

import csv
import itertools
import os
import queue
import re
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlmodel import Session, col, select
from werkzeug.serving import make_server

from generation.writer import Sample
from service import create_app
from service.brief_edits import update_experiment, update_segment
from service.config import Settings
from service.copy_checks import lint_config
from service.dashboard import experiment_pages
from service.dashboard.experiment_pages import CSV_COLUMNS
from service.decisions import decide
from service.demo import DEMO, VARIANTS, seed_demo
from service.demo_history import seed_demo_history
from service.events import record_events
from service.experiments import (
    add_variant,
    create_experiment,
    find_segment,
    update_policy,
    update_variant,
)
from service.generation_jobs import JobRunner
from service.marketers import create_marketer
from service.models import (
    Experiment,
    GenerationJob,
    LifecycleEvent,
    Origin,
    Segment,
    Variant,
    VariantStatus,
    utcnow,
)
from service.policy import LifecyclePolicy
from service.reports import experiment_report
from service.schemas import (
    DecideIn,
    EventIn,
    ExperimentCreate,
    ExperimentPatch,
    ProductPatch,
    VariantCreate,
    VariantPatch,
)
from service.snapshot import SnapshotCache
from tests.test_lifecycle_run import held_as_too_long

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "var" / "screenshots" / "experiment.png"

EMAIL = "ana@example.com"
PASSWORD = "correct-horse-battery"

SCRIPT_TEXT = "<script>alert(1)</script>"
PRICE_RULE = (
    "product.price: must be a number written like 1299.50, with a decimal point and "
    "no currency sign or thousands separator"
)
IMG_TEXT = "<img src=x onerror=alert(1)>"

# The literal format is pinned in test_dashboard_pages.py; here the browser download must match.
CSV_HEADER = list(CSV_COLUMNS)

_names = itertools.count(1)


# --- the server -----------------------------------------------------------------------------


class SteppedWriter:
    """Stands in for the model, one round at a time: each round waits for the lines a test puts
    in `rounds`, so the test sees the job's page between rounds. No test loads a real model."""

    model_id = "browser-test-writer"

    def __init__(self) -> None:
        self.rounds: queue.Queue[list[str]] = queue.Queue()

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        try:
            lines = self.rounds.get(timeout=30)
        except queue.Empty:
            raise RuntimeError("the test gave the writer no round") from None
        return [Sample(text=line, finished=True, logprob=-1.0) for line in lines]

    def finish_the_job(self, jobs: JobRunner) -> None:
        """Lets a job that a test left midway run out its rounds, then forgets the rounds it
        did not take, so the next test's job starts from an empty queue."""
        for _ in range(jobs.options.max_rounds):
            self.rounds.put([])
        jobs.join(timeout=30)
        while not self.rounds.empty():
            self.rounds.get_nowait()


@dataclass
class Site:
    base_url: str
    engine: sa.Engine
    settings: Settings
    demo_id: int
    writer: SteppedWriter
    jobs: JobRunner

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def variant(self, variant_id: int) -> Variant:
        with self.session() as session:
            variant = session.get(Variant, variant_id)
            assert variant is not None, f"variant {variant_id} is gone from the database"
            return variant

    def segment_description(self, experiment_id: int, key: str) -> str:
        with self.session() as session:
            return find_segment(session=session, experiment_id=experiment_id, key=key).description

    def brand_voice(self, experiment_id: int) -> str | None:
        with self.session() as session:
            return session.get_one(Experiment, experiment_id).brand_voice

    def segment_variants(self, experiment_id: int, key: str) -> list[Variant]:
        with self.session() as session:
            segment = find_segment(session=session, experiment_id=experiment_id, key=key)
            return list(
                session.exec(
                    select(Variant)
                    .where(Variant.segment_id == segment.id)
                    .order_by(col(Variant.id))
                )
            )


@pytest.fixture(scope="module")
def site(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    path = tmp_path_factory.mktemp("dashboard-browser") / "copybandit.db"
    shutil.copy(sqlite_template, path)
    app = create_app(
        {
            "database_url": f"sqlite:///{path}",
            "env": "test",
            "snapshot_ttl_seconds": 0.0,
            "propensity_samples": 2000,
            "scheduler": "off",
        }
    )
    engine: sa.Engine = app.extensions["copybandit.engine"]
    settings: Settings = app.extensions["copybandit.settings"]
    writer = SteppedWriter()
    jobs: JobRunner = app.extensions["copybandit.jobs"]
    jobs.writer_factory = lambda: writer
    with Session(engine, expire_on_commit=False) as session:
        create_marketer(session=session, email=EMAIL, password=PASSWORD)
        demo = seed_demo(session=session)
        assert demo is not None and demo.id is not None
        # Four days of traffic through the real bandit: numbers in every row, lines in the charts.
        seed_demo_history(
            session=session,
            settings=settings,
            experiment_id=demo.id,
            days=4,
            decisions_per_day=150,
        )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-server", daemon=True)
    thread.start()
    try:
        yield Site(
            base_url=f"http://127.0.0.1:{server.server_port}",
            engine=engine,
            settings=settings,
            demo_id=demo.id,
            writer=writer,
            jobs=jobs,
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the dashboard browser tests need Debian's Chromium at {CHROMIUM}: "
            "`apt-get install chromium` (`make test` installs it; Playwright cannot download one)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Tab:
    page: Page
    dialogs: list[str]


@contextmanager
def open_tab(browser: Browser, site: Site, **context_options: Any) -> Iterator[Tab]:
    """A page in a browser context of its own, recording every dialog it opens."""
    context = browser.new_context(base_url=site.base_url, **context_options)
    context.set_default_timeout(10_000)
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield Tab(page, dialogs)
    finally:
        context.close()


@pytest.fixture(scope="module")
def signed_in_state(browser: Browser, site: Site) -> dict[str, Any]:
    """The cookies of one sign-in through the form, shared by the tests that are not about
    signing in (each password check costs a deliberately slow hash)."""
    with open_tab(browser, site) as tab:
        signed_in(tab.page)
        return dict(tab.page.context.storage_state())


@pytest.fixture
def guest(browser: Browser, site: Site) -> Iterator[Page]:
    """A signed-out browser."""
    with open_tab(browser, site) as tab:
        yield tab.page
        assert tab.dialogs == [], f"a page opened a dialog: {tab.dialogs}"


@pytest.fixture
def page(browser: Browser, site: Site, signed_in_state: dict[str, Any]) -> Iterator[Page]:
    """A browser signed in as EMAIL."""
    with open_tab(browser, site, storage_state=signed_in_state) as tab:
        yield tab.page
        assert tab.dialogs == [], f"a page opened a dialog: {tab.dialogs}"


# --- helpers --------------------------------------------------------------------------------


def sign_in(page: Page, *, email: str = EMAIL, password: str = PASSWORD) -> None:
    if "/dashboard/sign-in" not in page.url:
        page.goto("/dashboard/sign-in")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def signed_in(page: Page) -> None:
    sign_in(page)
    expect(page.locator("header .who")).to_have_text(EMAIL)


def make_experiment(
    site: Site,
    *,
    segments: tuple[str, ...] = ("tea-lovers",),
    active: dict[str, list[str]] | None = None,
    pending: dict[str, list[str]] | None = None,
) -> tuple[int, dict[str, list[int]]]:
    """A fresh experiment: `active` copy added by hand (the first of each is the control) and
    `pending` copy as the generator leaves it. Returns its id and the variant ids per segment."""
    body = {
        "name": f"Aurora kettle launch {next(_names)}",
        "product": {"name": "Aurora kettle", "description": "A 1.7 l glass kettle.", "price": 49},
        "segments": [{"key": key, "description": f"People who are {key}."} for key in segments],
    }
    ids: dict[str, list[int]] = {key: [] for key in segments}
    with site.session() as session:
        experiment = create_experiment(
            session=session, experiment_create=ExperimentCreate.model_validate(body)
        )
        assert experiment.id is not None
        for key, texts in (active or {}).items():
            for i, text in enumerate(texts):
                variant = add_variant(
                    session=session,
                    experiment_id=experiment.id,
                    variant_create=VariantCreate(
                        segment=key, text=text, origin=Origin.CONTROL if i == 0 else Origin.MANUAL
                    ),
                )
                ids[key].append(variant.id)  # type: ignore[arg-type]
        for key, texts in (pending or {}).items():
            segment = find_segment(session=session, experiment_id=experiment.id, key=key)
            for text in texts:
                variant = Variant(
                    experiment_id=experiment.id,
                    segment_id=segment.id,  # type: ignore[arg-type]
                    text=text,
                    origin=Origin.GENERATED.value,
                    status=VariantStatus.PENDING_REVIEW.value,
                    status_reason="generated by a test",
                    audit={"lint": {"passed": ["length", "markup", "banned_phrase"]}},
                )
                session.add(variant)
                session.commit()
                ids[key].append(variant.id)  # type: ignore[arg-type]
        return experiment.id, ids


def serve(
    site: Site, experiment_id: int, segment: str, n: int, converts: Callable[[int], bool]
) -> None:
    """`n` decisions through the real bandit; a conversion whenever `converts(variant_id)`."""
    cache = SnapshotCache(ttl_seconds=0.0, propensity_draws=site.settings.propensity_samples, rng=3)
    with site.session() as session:
        for _ in range(n):
            decision = decide(
                session=lambda: session,
                bind=session.get_bind(),
                cache=cache,
                settings=site.settings,
                decide_in=DecideIn(experiment=experiment_id, segment=segment),
            )
            if converts(decision.variant_id):
                record_events(
                    session=session,
                    events=[EventIn(impression_id=decision.impression_id, type="conversion")],
                )
                session.commit()


def set_counts(site: Site, counts: dict[int, tuple[int, int]]) -> None:
    """Give each variant its (impressions, conversions) outright, without serving them."""
    with site.session() as session:
        for variant_id, (impressions, conversions) in counts.items():
            variant = session.get_one(Variant, variant_id)
            variant.impressions, variant.conversions = impressions, conversions
            session.add(variant)
        session.commit()


def row(page: Page, variant_id: int) -> Any:
    return page.locator(f'tr[data-variant-id="{variant_id}"]')


def flash(page: Page) -> Any:
    return page.locator("p.flash")


def path_of(page: Page) -> str:
    return "/" + page.url.split("/", 3)[3]


# --- signing in and out ---------------------------------------------------------------------


def test_wrong_password_shows_an_error_and_stays_on_sign_in(guest: Page) -> None:
    page = guest
    page.goto("/dashboard/sign-in")
    with page.expect_response(
        lambda r: r.request.method == "POST" and "/dashboard/sign-in" in r.url
    ) as answer:
        sign_in(page, password="not-the-password")
    assert answer.value.status == 401

    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert path_of(page).startswith("/dashboard/sign-in")
    # What was typed stays, except the password.
    expect(page.get_by_label("Email")).to_have_value(EMAIL)
    expect(page.get_by_label("Password")).to_have_value("")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)

    # An unknown address gets the same words: the form never says which part was wrong.
    sign_in(page, email="nobody@example.com", password=PASSWORD)
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")

    # And nothing was signed in: the list still sends the browser to the form.
    page.goto("/dashboard/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert path_of(page).startswith("/dashboard/sign-in")


@pytest.mark.parametrize("email", ["zoë@example.com", "ana@müller.example"])
def test_an_account_with_a_non_ascii_address_can_sign_in(
    guest: Page, site: Site, email: str
) -> None:
    """`users create` takes any address with an @: Chromium's <input type=email> refused to send
    a non-ASCII name before the @, and sent a non-ASCII domain as punycode (xn--...), which named
    no account: "Wrong email or password." either way."""
    with site.session() as session:
        create_marketer(session=session, email=email, password=PASSWORD)
    page = guest
    sign_in(page, email=email)
    expect(page.locator("header .who")).to_have_text(email)
    assert path_of(page) == "/dashboard/"


def test_sign_in_lists_experiments_and_opens_one(guest: Page, site: Site) -> None:
    page = guest
    page.goto("/")
    # Signed out, the root sends the browser to the sign-in form, which returns it to the list.
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    signed_in(page)
    assert path_of(page) == "/dashboard/"
    expect(page.get_by_role("heading", name="Experiments")).to_be_visible()

    with site.session() as session:
        variants = session.exec(select(Variant).where(Variant.experiment_id == site.demo_id)).all()
    impressions = sum(v.impressions for v in variants)
    conversions = sum(v.conversions for v in variants)
    assert impressions == 600 and conversions > 0

    demo_row = page.locator("table.list tbody tr", has_text=DEMO["name"])
    expect(demo_row).to_have_count(1)
    cells = demo_row.locator("td")
    expect(cells.nth(2)).to_have_text("weekend-hikers, trail-racers, value-seekers")
    expect(cells.nth(3)).to_have_text(f"{impressions:,}")
    expect(cells.nth(4)).to_have_text(f"{conversions:,}")

    demo_row.get_by_role("link", name=DEMO["name"]).click()
    expect(page).to_have_url(f"{site.base_url}/dashboard/experiments/{site.demo_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(DEMO["name"])
    expect(page.locator("section.segment")).to_have_count(3)
    assert page.locator("section.segment").evaluate_all(
        "sections => sections.map(s => s.dataset.segment)"
    ) == list(VARIANTS)

    for key in VARIANTS:
        section = page.locator(f"#segment-{key}")
        own = site.segment_variants(site.demo_id, key)
        shown = sum(v.impressions for v in own)
        expect(section.locator("p.totals")).to_contain_text(f"{shown:,} impressions")
        expect(section.locator("table.variants tbody tr")).to_have_count(len(own))
        for variant in own:
            cells = section.locator(f'tr[data-variant-id="{variant.id}"] td')
            expect(cells.nth(1)).to_have_text(variant.text)
            expect(cells.nth(2).locator(".state")).to_have_text("active")
            expect(cells.nth(3)).to_have_text(f"{variant.impressions:,}")
            expect(cells.nth(4)).to_have_text(f"{variant.conversions:,}")
        # No winner declared on the demo, and four days of test traffic give no line the
        # policy's min_impressions: the headline is the leader, as too early to tell.
        assert all(v.impressions < 200 for v in own), [v.impressions for v in own]
        headline = section.get_by_test_id("headline")
        expect(headline.locator(".badge")).to_have_text("Too early to tell")
        expect(headline).to_contain_text("Ahead on too little evidence")
        expect(headline).to_contain_text("no winner declared yet")


def test_sign_out_then_the_experiment_page_asks_to_sign_in(guest: Page, site: Site) -> None:
    page = guest
    experiment_path = f"/dashboard/experiments/{site.demo_id}"
    signed_in(page)
    page.goto(experiment_path)
    expect(page.get_by_role("heading", level=1)).to_have_text(DEMO["name"])

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert path_of(page) == "/dashboard/sign-in"

    # Back does not bring the private page out of a cache (pages are sent no-store).
    page.go_back()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("section.segment")).to_have_count(0)

    page.goto(experiment_path)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert path_of(page).startswith("/dashboard/sign-in?next=")
    expect(page.locator("section.segment")).to_have_count(0)
    expect(page.get_by_text(DEMO["name"])).to_have_count(0)

    # Signing in again goes back where the browser was headed.
    signed_in(page)
    expect(page).to_have_url(f"{site.base_url}{experiment_path}")
    expect(page.get_by_role("heading", level=1)).to_have_text(DEMO["name"])


# --- the review queue -----------------------------------------------------------------------


def test_approve_from_the_review_queue_makes_the_variant_active(page: Page, site: Site) -> None:
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner."]},
        pending={
            "tea-lovers": [
                "Loose-leaf mornings start with the Aurora glass kettle.",
                "Watch your water boil in the Aurora glass kettle.",
            ]
        },
    )
    _, approved, other = ids["tea-lovers"]
    page.goto(f"/dashboard/experiments/{experiment_id}")
    expect(row(page, approved).locator("td.status .state")).to_have_text("pending review")

    page.get_by_role("link", name="Review queue (2)").click()
    expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
    expect(page.locator("table.review tbody tr")).to_have_count(2)
    expect(row(page, approved).locator("td.lint")).to_contain_text(
        "when written: passed length, markup, banned_phrase"
    )

    row(page, approved).get_by_role("button", name=f"Approve #{approved}", exact=True).click()
    expect(flash(page)).to_have_text(f"Variant #{approved} approved.")
    assert path_of(page) == f"/dashboard/experiments/{experiment_id}/review"
    expect(row(page, approved)).to_have_count(0)
    expect(row(page, other)).to_have_count(1)

    page.get_by_role("link", name=re.compile(r"^← Aurora kettle launch")).click()
    expect(row(page, approved).locator("td.status .state")).to_have_text("active")
    expect(row(page, approved).locator("td.status .reason")).to_have_text(f"approved by {EMAIL}")
    expect(row(page, approved)).to_have_class(re.compile(r"\bstatus-active\b"))
    expect(
        row(page, approved).get_by_role("button", name=f"Pause #{approved}", exact=True)
    ).to_be_visible()
    expect(page.get_by_role("link", name="Review queue (1)")).to_be_visible()

    variant = site.variant(approved)
    assert variant.status == VariantStatus.ACTIVE
    assert variant.status_reason == f"approved by {EMAIL}"
    assert site.variant(other).status == VariantStatus.PENDING_REVIEW


def test_reject_removes_the_variant_from_the_queue(page: Page, site: Site) -> None:
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner."]},
        pending={"tea-lovers": ["Buy the Aurora kettle now!!!", "Aurora: the kettle for tea."]},
    )
    _, rejected, kept = ids["tea-lovers"]
    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    row(page, rejected).get_by_role("button", name=f"Reject #{rejected}", exact=True).click()

    expect(flash(page)).to_have_text(f"Variant #{rejected} rejected.")
    expect(row(page, rejected)).to_have_count(0)
    expect(row(page, kept)).to_have_count(1)
    assert site.variant(rejected).status == VariantStatus.REJECTED
    assert site.variant(kept).status == VariantStatus.PENDING_REVIEW

    # Rejected copy is listed on the experiment page, but offers no buttons.
    page.goto(f"/dashboard/experiments/{experiment_id}")
    expect(row(page, rejected).locator("td.status .state")).to_have_text("rejected")
    expect(row(page, rejected).get_by_role("button")).to_have_count(0)


def one_line_to_edit(site: Site) -> tuple[int, int]:
    """A fresh experiment with one line live and one waiting for review: their ids."""
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner."]},
        pending={"tea-lovers": ["The Aurora kettle boils water water water."]},
    )
    return experiment_id, ids["tea-lovers"][1]


def test_edit_then_approve_saves_the_new_text(page: Page, site: Site) -> None:
    experiment_id, edited = one_line_to_edit(site)
    new_text = "The Aurora glass kettle: watch your tea water come to the boil."
    page.goto(f"/dashboard/experiments/{experiment_id}/review")

    box = page.get_by_label(f"edit #{edited}")
    expect(box).to_have_value("The Aurora kettle boils water water water.")
    box.fill(new_text)
    row(page, edited).get_by_role("button", name="Save edit and approve").click()

    expect(flash(page)).to_have_text(f"Variant #{edited} edited and approved.")
    expect(row(page, edited)).to_have_count(0)
    variant = site.variant(edited)
    assert variant.text == new_text
    assert variant.status == VariantStatus.ACTIVE
    assert variant.status_reason == f"approved by {EMAIL} after editing"

    page.goto(f"/dashboard/experiments/{experiment_id}")
    expect(row(page, edited).locator("td.copy")).to_have_text(new_text)
    expect(row(page, edited).locator("td.status .state")).to_have_text("active")


def test_an_edit_over_text_changed_since_the_page_was_drawn_is_refused(
    page: Page, site: Site
) -> None:
    """The review page is open; an API client fixes the line meanwhile. Saving the edit typed
    over the old text would have replaced the fix unseen; it is refused, keeping what was typed."""
    experiment_id, edited = one_line_to_edit(site)
    typed = "The Aurora glass kettle: watch your tea water come to the boil."
    fixed = "The Aurora kettle: 1.7 l of tea water in three minutes."
    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    page.get_by_label(f"edit #{edited}").fill(typed)
    with site.session() as session:
        update_variant(
            session=session,
            variant_id=edited,
            patch=VariantPatch(text=fixed),
            lint_config=lint_config(site.settings),
        )
    row(page, edited).get_by_role("button", name="Save edit and approve").click()

    expect(page.get_by_test_id("error")).to_have_text(f"#{edited} was edited since you read it")
    expect(page.get_by_test_id("unsaved")).to_have_value(typed)
    variant = site.variant(edited)
    assert (variant.text, variant.status) == (fixed, VariantStatus.PENDING_REVIEW)


def test_bulk_approve_the_ticked_variants(page: Page, site: Site) -> None:
    experiment_id, ids = make_experiment(
        site,
        segments=("tea-lovers", "busy-parents"),
        active={
            "tea-lovers": ["The Aurora kettle: tea, sooner."],
            "busy-parents": ["The Aurora kettle: hot water, fast."],
        },
        pending={
            "tea-lovers": ["Brew better tea with the Aurora kettle.", "Aurora: a kettle to see."],
            "busy-parents": ["Hot water for bottles in a minute: the Aurora kettle."],
        },
    )
    first, untouched = ids["tea-lovers"][1:]
    second = ids["busy-parents"][1]
    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    expect(page.locator("table.review tbody tr")).to_have_count(3)

    page.get_by_label(f"select #{first}").check()
    page.get_by_label(f"select #{second}").check()
    page.get_by_role("button", name="Approve selected").click()

    expect(flash(page)).to_have_text(f"Approved 2: #{first}, #{second}.")
    expect(page.locator("table.review tbody tr")).to_have_count(1)
    expect(row(page, untouched)).to_have_count(1)
    expect(page.get_by_label(f"select #{untouched}")).not_to_be_checked()
    assert site.variant(first).status == VariantStatus.ACTIVE
    assert site.variant(second).status == VariantStatus.ACTIVE
    assert site.variant(untouched).status == VariantStatus.PENDING_REVIEW

    # Nothing ticked: refused with a message, and nothing changes.
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Reject selected").click()
    assert answer.value.status == 400
    expect(page.get_by_test_id("error")).to_contain_text("tick at least one variant")
    assert site.variant(untouched).status == VariantStatus.PENDING_REVIEW


def test_bulk_approve_of_a_ticked_line_edited_in_its_box_approves_the_edit(
    page: Page, site: Site
) -> None:
    """Each row's edit box was in a form of its own: a line fixed in its box ("four minutes"),
    ticked and approved with the others went live as it read before ("three minutes"), under
    the name of the marketer who had just corrected it, and what they typed was gone."""
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner."]},
        pending={
            "tea-lovers": [
                "The Aurora kettle boils in three minutes flat.",
                "Aurora: a kettle to see.",
                "Brew better tea with the Aurora kettle.",
            ]
        },
    )
    edited, as_shown, left = ids["tea-lovers"][1:]
    fixed = "The Aurora kettle boils in four minutes flat."
    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    page.get_by_label(f"edit #{edited}").fill(fixed)
    # Typed into but not ticked: not approved, and not changed.
    page.get_by_label(f"edit #{left}").fill("Brew better tea, sooner.")
    page.get_by_label(f"select #{edited}").check()
    page.get_by_label(f"select #{as_shown}").check()
    page.get_by_role("button", name="Approve selected").click()

    expect(flash(page)).to_have_text(f"Approved 2: #{edited}, #{as_shown}.")
    variant = site.variant(edited)
    assert (variant.text, variant.status) == (fixed, VariantStatus.ACTIVE)
    assert variant.status_reason == f"approved by {EMAIL} after editing"
    variant = site.variant(as_shown)
    assert (variant.text, variant.status) == ("Aurora: a kettle to see.", VariantStatus.ACTIVE)
    assert variant.status_reason == f"approved by {EMAIL}"
    variant = site.variant(left)
    assert (variant.text, variant.status) == (
        "Brew better tea with the Aurora kettle.",
        VariantStatus.PENDING_REVIEW,
    )


def test_a_rows_approve_after_an_edit_in_its_box_approves_the_edit(page: Page, site: Site) -> None:
    """The row's Approve button was in a form of its own, without the box: a line corrected in
    its box and approved with the button beside it went live uncorrected."""
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner."]},
        pending={"tea-lovers": ["The Aurora kettle boils in three minutes flat."]},
    )
    edited = ids["tea-lovers"][1]
    fixed = "The Aurora kettle boils in four minutes flat."
    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    page.get_by_label(f"edit #{edited}").fill(fixed)
    page.get_by_role("button", name=f"Approve #{edited}", exact=True).click()

    expect(flash(page)).to_have_text(f"Variant #{edited} edited and approved.")
    variant = site.variant(edited)
    assert (variant.text, variant.status) == (fixed, VariantStatus.ACTIVE)
    assert variant.status_reason == f"approved by {EMAIL} after editing"


def test_a_line_stored_starting_with_a_line_break_and_left_as_shown_is_approved_unedited(
    page: Page, site: Site
) -> None:
    """A browser drops a line break straight after <textarea>: a line stored before text was
    stripped, starting with one, came back from its untouched box without it, read as edited,
    and its Approve rewrote it "after editing" that no one did."""
    legacy = "\nTea lovers, meet the Aurora kettle."
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner."]},
        pending={"tea-lovers": [legacy]},
    )
    vid = ids["tea-lovers"][1]
    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    expect(page.get_by_label(f"edit #{vid}")).to_have_value(legacy)
    page.get_by_role("button", name=f"Approve #{vid}", exact=True).click()

    expect(flash(page)).to_have_text(f"Variant #{vid} approved.")
    variant = site.variant(vid)
    assert (variant.text, variant.status) == (legacy, VariantStatus.ACTIVE)
    assert variant.status_reason == f"approved by {EMAIL}"


def test_enter_in_a_ticked_box_approves_the_ticked_lines(page: Page, site: Site) -> None:
    """The rows' "Save edit and approve" buttons send the queue's one form: Enter in a ticked
    box must still send it as "Approve selected", not as the first row's button."""
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner."]},
        pending={"tea-lovers": ["Aurora: a kettle to see.", "Brew better tea with Aurora."]},
    )
    first, ticked = ids["tea-lovers"][1:]
    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    page.get_by_label(f"select #{ticked}").check()
    page.get_by_label(f"select #{ticked}").press("Enter")
    expect(flash(page)).to_have_text(f"Approved 1: #{ticked}.")
    assert site.variant(first).status == VariantStatus.PENDING_REVIEW
    assert site.variant(ticked).status == VariantStatus.ACTIVE


# --- reading the results --------------------------------------------------------------------


def test_declared_winner_is_the_headline_with_its_full_text(page: Page, site: Site) -> None:
    long_text = (
        "The Aurora kettle is a 1.7 litre glass kettle that lets you watch loose-leaf tea water "
        "come to the boil, switches itself off the moment it is ready, keeps the countertop "
        "dry with a drip-free spout, and glows a soft blue while it heats so you always know."
    )
    experiment_id, ids = make_experiment(
        site, active={"tea-lovers": ["The Aurora kettle: tea, sooner.", long_text]}
    )
    control, winner = ids["tea-lovers"]
    # Only the control converts, so the control leads: a declared winner must beat the leader.
    # Forty decisions are evidence enough to lead under this policy.
    with site.session() as session:
        update_policy(
            session=session,
            experiment_id=experiment_id,
            changes=LifecyclePolicy.model_validate({"min_impressions": 10}),
            by="test",
        )
    serve(site, experiment_id, "tea-lovers", 40, converts=lambda variant_id: variant_id == control)
    with site.session() as session:
        report = experiment_report(session=session, experiment_id=experiment_id)
    assert report.segments[0].leader is not None
    assert report.segments[0].leader.variant_id == control

    page.goto(f"/dashboard/experiments/{experiment_id}")
    headline = page.get_by_test_id("headline")
    expect(headline.locator(".badge")).to_have_text("Leading")
    expect(headline.locator(".variant-id")).to_have_text(f"#{control}")

    declared_at = utcnow()
    with site.session() as session:
        segment = find_segment(session=session, experiment_id=experiment_id, key="tea-lovers")
        segment.winner_variant_id = winner
        segment.winner_declared_at = declared_at
        session.add(segment)
        session.commit()

    page.reload()
    expect(headline).to_have_class(re.compile(r"\bwinner\b"))
    expect(headline.locator(".badge")).to_have_text("Winner")
    expect(headline.locator(".variant-id")).to_have_text(f"#{winner}")
    expect(headline.locator("p.copy")).to_have_text(long_text)
    expect(headline.locator("p.note")).to_have_text(
        f"Declared {declared_at.strftime('%Y-%m-%d %H:%M')} UTC."
    )
    expect(row(page, winner)).to_have_class(re.compile(r"\bhighlighted\b"))
    expect(row(page, control)).not_to_have_class(re.compile(r"\bhighlighted\b"))

    page.get_by_role("link", name="Experiments", exact=True).click()
    with site.session() as session:
        name = session.get(Experiment, experiment_id).name  # type: ignore[union-attr]
    listed = page.locator("table.list tbody tr", has_text=name)
    expect(listed.locator("td").nth(5)).to_have_text("1 / 1")


def test_a_leader_on_too_little_evidence_is_not_marked_leading(page: Page, site: Site) -> None:
    """A line served 12 times was marked LEADING on its prior's probability best over the
    control, proven on 867 impressions: the control is headlined as the best proven copy, and
    the other line's lead is named for what it is."""
    experiment_id, ids = make_experiment(
        site, active={"tea-lovers": ["The Aurora kettle: tea, sooner.", "Boil, pour, sip."]}
    )
    control, thin = ids["tea-lovers"]
    set_counts(site, {control: (867, 43), thin: (12, 1)})
    with site.session() as session:
        leader = experiment_report(session=session, experiment_id=experiment_id).segments[0].leader
    assert leader is not None and leader.variant_id == thin

    page.goto(f"/dashboard/experiments/{experiment_id}")
    headline = page.get_by_test_id("headline")
    expect(headline.locator(".badge")).to_have_text("Best proven")
    expect(headline.locator(".badge")).to_have_css("text-transform", "uppercase")
    expect(headline.locator(".variant-id")).to_have_text(f"#{control}")
    expect(headline.locator("p.copy")).to_have_text("The Aurora kettle: tea, sooner.")
    expect(page.get_by_test_id("thin-lead")).to_have_text(
        f"#{thin} is ahead on too little evidence (12 impressions of 200 needed)."
    )
    expect(page.get_by_test_id("thin-lead")).to_be_visible()
    expect(page.get_by_text("Leading", exact=True)).to_have_count(0)
    expect(row(page, control)).to_have_class(re.compile(r"\bhighlighted\b"))
    expect(row(page, thin)).not_to_have_class(re.compile(r"\bhighlighted\b"))


def test_a_segments_only_live_copy_is_not_coloured_as_a_leader(page: Page, site: Site) -> None:
    """Badged "Only live copy", a lone line with the evidence still had the leader's class, and
    the leader's blue edge and background: it leads nothing, and is styled apart."""
    experiment_id, ids = make_experiment(
        site, active={"tea-lovers": ["The Aurora kettle: tea, sooner.", "Boil, pour, sip."]}
    )
    control, other = ids["tea-lovers"]
    set_counts(site, {control: (900, 90), other: (900, 9)})

    page.goto(f"/dashboard/experiments/{experiment_id}")
    headline = page.get_by_test_id("headline")
    expect(headline.locator(".badge")).to_have_text("Leading")
    expect(headline).to_have_class(re.compile(r"\bleader\b"))
    blue = "rgb(0, 114, 178)"  # --accent
    expect(headline).to_have_css("border-left-color", blue)

    with site.session() as session:
        update_variant(
            session=session,
            variant_id=other,
            patch=VariantPatch(status=VariantStatus.PAUSED),
            by="test",
        )
    page.reload()
    expect(headline.locator(".badge")).to_have_text("Only live copy")
    expect(headline.locator(".variant-id")).to_have_text(f"#{control}")
    expect(headline).not_to_have_class(re.compile(r"\bleader\b"))
    expect(headline).to_have_css("border-left-color", "rgb(91, 100, 115)")  # --muted
    expect(headline).to_have_css("background-color", "rgb(255, 255, 255)")


def test_export_csv_matches_the_database(page: Page, site: Site, tmp_path: Path) -> None:
    key = "weekend-hikers"
    page.goto(f"/dashboard/experiments/{site.demo_id}")
    with page.expect_download() as info:
        page.locator(f"#segment-{key}").get_by_role("link", name="Export CSV").click()
    download = info.value
    assert download.failure() is None
    assert download.suggested_filename == f"experiment-{site.demo_id}-{key}.csv"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)

    assert saved.read_bytes().startswith("\ufeff".encode())
    with saved.open(newline="", encoding="utf-8-sig") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == CSV_HEADER
    by_id = {int(r[0]): dict(zip(header, r, strict=True)) for r in rows}
    assert len(by_id) == len(rows)

    variants = site.segment_variants(site.demo_id, key)
    assert sorted(by_id) == [v.id for v in variants]
    assert sum(v.impressions for v in variants) > 0
    for variant in variants:
        line = by_id[variant.id]  # type: ignore[index]
        assert line["segment"] == key
        assert line["status"] == variant.status
        assert line["origin"] == variant.origin
        assert line["text"] == variant.text
        assert int(line["impressions"]) == variant.impressions
        assert int(line["conversions"]) == variant.conversions
        if variant.impressions:
            rate = variant.conversions / variant.impressions
            assert float(line["rate"]) == pytest.approx(rate, rel=1e-5)
        else:
            assert line["rate"] == ""
        assert 0.0 <= float(line["ci95_low"]) <= float(line["posterior_mean"])
        assert float(line["posterior_mean"]) <= float(line["ci95_high"]) <= 1.0
    assert sum(float(line["prob_best"]) for line in by_id.values()) == pytest.approx(1.0, abs=0.01)


def test_charts_render_and_the_page_is_screenshotted(page: Page, site: Site) -> None:
    response = page.goto(f"/dashboard/experiments/{site.demo_id}")
    assert response is not None and response.ok
    expect(page.get_by_role("heading", level=1)).to_have_text(DEMO["name"])

    for key in VARIANTS:
        section = page.locator(f"#segment-{key}")
        figures = section.locator("figure.chart")
        expect(figures).to_have_count(2)
        expect(figures.locator("figcaption")).to_have_text(
            ["Traffic share per period (UTC)", "Conversion rate, cumulative (UTC)"]
        )
        served = {v.id for v in site.segment_variants(site.demo_id, key) if v.impressions > 0}
        table_order = [
            int(i)
            for i in section.locator("table.variants tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.variantId)"
            )
        ]
        for i in range(2):
            figure = figures.nth(i)
            expect(figure.locator("svg").first).to_be_visible()
            # One line per served variant, each with several points.
            expect(figure.locator("svg g.series")).to_have_count(len(served))
            # Labelled in the table's order (most likely best first), skipping unserved copy.
            expect(figure.locator("ul.legend li")).to_have_text(
                [f"#{v}" for v in table_order if v in served]
            )
            polylines = figure.locator("svg polyline")
            assert polylines.count() >= len(served)
            for points in polylines.evaluate_all("ps => ps.map(p => p.getAttribute('points'))"):
                assert len(points.split()) >= 2, points

    # The stylesheet loaded under the page's CSP (an unstyled page would be a broken screenshot).
    assert page.evaluate("document.styleSheets.length") == 1
    assert page.evaluate("document.styleSheets[0].cssRules.length") > 0

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    viewport = page.viewport_size
    assert viewport is not None
    assert width == viewport["width"]
    # Full page: three segments of tables and charts reach well below the first screen.
    assert height > viewport["height"]
    assert 20_000 < len(data) < 20_000_000


def test_chart_axis_labels_fit_inside_the_chart(page: Page, site: Site) -> None:
    """Every tick label is drawn inside its SVG: inline SVG clips what overflows its box."""
    page.goto(f"/dashboard/experiments/{site.demo_id}")
    expect(page.locator("figure.chart")).to_have_count(6)
    outside = page.locator("figure.chart > svg").evaluate_all(
        """svgs => svgs.flatMap(svg => {
            const width = svg.viewBox.baseVal.width;
            return [...svg.querySelectorAll(":scope > text")].map(t => {
                const box = t.getBBox();
                return {label: t.textContent, left: box.x, right: box.x + box.width, width};
            }).filter(b => b.left < 0 || b.right > b.width);
        })"""
    )
    assert outside == [], f"tick labels cut off at the chart's edge: {outside}"


def test_a_charts_numbers_open_as_a_table_by_keyboard(page: Page, site: Site) -> None:
    """The chart is one image to a screen reader; its table, closed until asked for, opens from
    the keyboard and stays within the chart's width."""
    page.goto(f"/dashboard/experiments/{site.demo_id}")
    key = next(iter(VARIANTS))
    figure = page.locator(f"#segment-{key} figure.chart").first
    table = figure.locator("details.chart-data table")
    expect(table).to_be_hidden()
    summary = figure.get_by_text("As a table")
    summary.focus()
    page.keyboard.press("Enter")
    expect(table).to_be_visible()
    served = [v for v in site.segment_variants(site.demo_id, key) if v.impressions > 0]
    expect(table.get_by_role("columnheader")).to_have_count(1 + len(served))
    assert table.get_by_role("rowheader").count() >= 2
    chart_width = figure.locator("svg").first.bounding_box()
    details = figure.locator("details.chart-data").bounding_box()
    assert chart_width is not None and details is not None
    assert details["width"] <= chart_width["width"] + 1
    assert page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")


# --- changing copy by hand ------------------------------------------------------------------


def test_pause_then_resume_a_variant(page: Page, site: Site) -> None:
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner.", "Aurora: see your tea boil."]},
    )
    _, variant_id = ids["tea-lovers"]
    page.goto(f"/dashboard/experiments/{experiment_id}")
    status = row(page, variant_id).locator("td.status .state")
    expect(status).to_have_text("active")

    row(page, variant_id).get_by_role("button", name=f"Pause #{variant_id}", exact=True).click()
    expect(flash(page)).to_have_text(f"Variant #{variant_id} paused.")
    assert page.url.endswith(f"/dashboard/experiments/{experiment_id}#segment-tea-lovers")
    expect(status).to_have_text("paused")
    expect(
        row(page, variant_id).get_by_role("button", name=f"Pause #{variant_id}", exact=True)
    ).to_have_count(0)
    assert site.variant(variant_id).status == VariantStatus.PAUSED

    row(page, variant_id).get_by_role("button", name=f"Resume #{variant_id}", exact=True).click()
    expect(flash(page)).to_have_text(f"Variant #{variant_id} resumed.")
    expect(status).to_have_text("active")
    expect(
        row(page, variant_id).get_by_role("button", name=f"Pause #{variant_id}", exact=True)
    ).to_be_visible()
    variant = site.variant(variant_id)
    assert variant.status == VariantStatus.ACTIVE
    assert variant.status_reason == f"resumed by {EMAIL}"


def test_retiring_copy_resumed_in_another_browser_since_is_refused(
    browser: Browser, page: Page, site: Site, signed_in_state: dict[str, Any]
) -> None:
    """Two browsers show the same paused line. One resumes it; the other, still showing it
    paused, presses Retire. Retire starts from either status, so it went ahead, and undid the
    resume for good."""
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner.", "Aurora: see your tea boil."]},
    )
    _, variant_id = ids["tea-lovers"]
    page.goto(f"/dashboard/experiments/{experiment_id}")
    row(page, variant_id).get_by_role("button", name=f"Pause #{variant_id}", exact=True).click()
    expect(row(page, variant_id).locator("td.status .state")).to_have_text("paused")

    with open_tab(browser, site, storage_state=signed_in_state) as other:
        other.page.goto(f"/dashboard/experiments/{experiment_id}")
        resume = f"Resume #{variant_id}"
        row(other.page, variant_id).get_by_role("button", name=resume, exact=True).click()
        expect(flash(other.page)).to_have_text(f"Variant #{variant_id} resumed.")

    row(page, variant_id).get_by_role("button", name=f"Retire #{variant_id}", exact=True).click()
    expect(page.get_by_test_id("error")).to_have_text(
        f"#{variant_id} is no longer paused: it is active"
    )
    assert site.variant(variant_id).status == VariantStatus.ACTIVE


def test_the_message_after_an_action_is_in_view_where_the_page_lands(
    page: Page, site: Site
) -> None:
    """The page returns to the segment acted on (#segment-key); its message was at the top of the
    page, 1,900 px above the third segment, where nobody saw it."""
    segments = ("tea-lovers", "busy-parents", "night-owls")
    copy = ["The Aurora kettle: tea, sooner.", "Aurora: see your tea boil."]
    experiment_id, ids = make_experiment(
        site, segments=segments, active={key: copy for key in segments}
    )
    _, variant_id = ids["night-owls"]
    page.goto(f"/dashboard/experiments/{experiment_id}")
    row(page, variant_id).get_by_role("button", name=f"Pause #{variant_id}", exact=True).click()
    assert page.url.endswith("#segment-night-owls")
    expect(flash(page)).to_have_text(f"Variant #{variant_id} paused.")
    expect(flash(page)).to_be_in_viewport()
    # In its segment's section, still announced.
    expect(page.locator("#segment-night-owls p.flash[role=status]")).to_have_count(1)


def test_pausing_the_last_active_variant_is_refused(page: Page, site: Site) -> None:
    experiment_id, ids = make_experiment(
        site, active={"tea-lovers": ["The Aurora kettle: tea, sooner."]}
    )
    (only,) = ids["tea-lovers"]
    page.goto(f"/dashboard/experiments/{experiment_id}")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        row(page, only).get_by_role("button", name=f"Pause #{only}", exact=True).click()
    assert answer.value.status == 409
    expect(page.get_by_test_id("error")).to_contain_text("last active variant")
    assert site.variant(only).status == VariantStatus.ACTIVE


def test_add_a_variant_by_hand(page: Page, site: Site) -> None:
    experiment_id, ids = make_experiment(
        site,
        segments=("tea-lovers", "busy-parents"),
        active={
            "tea-lovers": ["The Aurora kettle: tea, sooner."],
            "busy-parents": ["The Aurora kettle: hot water, fast."],
        },
    )
    text = "Two cups in ninety seconds: the Aurora kettle keeps up with busy mornings."
    page.goto(f"/dashboard/experiments/{experiment_id}")
    section = page.locator("#segment-busy-parents")
    section.get_by_label("Add copy by hand").fill(text)
    section.get_by_role("button", name="Add and serve").click()

    expect(flash(page)).to_contain_text("to busy-parents; it is being served now.")
    match = re.search(r"#(\d+)", flash(page).inner_text())
    assert match, flash(page).inner_text()
    new_id = int(match.group(1))
    assert new_id not in ids["busy-parents"]

    expect(section.locator("table.variants tbody tr")).to_have_count(2)
    expect(row(page, new_id).locator("td.copy")).to_have_text(text)
    expect(row(page, new_id).locator("td.status .state")).to_have_text("active")
    expect(row(page, new_id).locator("td.id")).to_contain_text("manual")
    # It went to the segment whose form was used, not the other one.
    expect(page.locator("#segment-tea-lovers table.variants tbody tr")).to_have_count(1)

    variant = site.variant(new_id)
    assert (variant.text, variant.status, variant.origin) == (text, "active", "manual")
    with site.session() as session:
        segment = session.get(Segment, variant.segment_id)
    assert segment is not None and segment.key == "busy-parents"


def test_edit_the_brief_and_a_persona_then_add_a_segment(page: Page, site: Site) -> None:
    experiment_id, _ = make_experiment(
        site, active={"tea-lovers": ["The Aurora kettle: tea, sooner."]}
    )
    page.goto(f"/dashboard/experiments/{experiment_id}")
    page.get_by_text("Edit brief").click()
    page.get_by_label("Price (optional)").fill("45.50")
    page.get_by_label("Brand voice (optional)").fill("Calm, precise, a little warm.")
    page.get_by_role("button", name="Save brief").click()

    expect(flash(page)).to_have_text("Saved the brief.")
    expect(page.locator("p.product")).to_contain_text("45.50")
    with site.session() as session:
        stored = session.get_one(Experiment, experiment_id)
        assert (stored.product_price, stored.brand_voice) == (45.5, "Calm, precise, a little warm.")

    section = page.locator("#segment-tea-lovers")
    section.get_by_label("Edit the persona of tea-lovers").click()
    section.get_by_role("textbox", name="Persona of tea-lovers").fill(
        "Brew loose-leaf tea at 80 °C."
    )
    section.get_by_role("button", name="Save the persona of tea-lovers").click()
    expect(section.get_by_test_id("persona")).to_have_text("Brew loose-leaf tea at 80 °C.")
    expect(section.locator(".flash")).to_have_text("Saved the persona of tea-lovers.")

    adding = page.locator("#add-segment")
    adding.get_by_label("Segment key").fill("night-owls")
    adding.get_by_label("Who they are").fill("Brew after midnight.")
    adding.get_by_role("button", name="Add segment").click()
    added = page.locator("#segment-night-owls")
    expect(added.get_by_test_id("persona")).to_have_text("Brew after midnight.")
    expect(added.locator(".flash")).to_contain_text("Added segment night-owls.")
    with site.session() as session:
        reasons = session.exec(
            select(LifecycleEvent.reason).where(
                LifecycleEvent.experiment_id == experiment_id, LifecycleEvent.action == "edit"
            )
        ).all()
    assert [reason.split(":")[0] for reason in reasons] == [f"edited by {EMAIL}"] * 2 + [
        f"added by {EMAIL}"
    ]


# A teapot emoji: one character to the server, two UTF-16 code units to a browser's maxlength.
TEAPOT = "\U0001fad6"


def test_a_box_takes_as_many_characters_as_the_server_does(page: Page, site: Site) -> None:
    """The boxes had HTML maxlength, which a browser counts in UTF-16 code units, where the
    server counts characters: a name of emoji stopped at 100 of its 200, and copy at 500 of its
    1,000. The server's limit is the one limit: within it, all that was typed is kept and
    stored; past it, the refusal names the box and keeps what was typed in it."""
    name = TEAPOT * 199 + str(next(_names))[-1]
    page.goto("/dashboard/experiments/new")
    page.get_by_label("Experiment name").fill(name)
    page.get_by_label("Product name").fill(TEAPOT * 200)
    page.get_by_label("Product description").fill("A 1.7 l glass kettle.")
    page.get_by_label("Segments, one per line").fill("tea-lovers: Brew loose-leaf tea daily.")
    expect(page.get_by_label("Experiment name")).to_have_value(name)
    page.get_by_role("button", name="Create experiment").click()
    expect(page.locator("h1")).to_have_text(name)
    with site.session() as session:
        stored = session.exec(select(Experiment).where(Experiment.name == name)).one()
    assert stored.product_name == TEAPOT * 200

    copy = TEAPOT * 1000
    section = page.locator("#segment-tea-lovers")
    section.get_by_label("Add copy by hand").fill(copy)
    section.get_by_role("button", name="Add and serve").click()
    expect(flash(page)).to_contain_text("to tea-lovers; it is being served now.")
    assert [variant.text for variant in site.segment_variants(stored.id, "tea-lovers")] == [copy]  # type: ignore[arg-type]

    page.get_by_text("Edit brief").click()
    box = page.get_by_label("Experiment name")
    box.fill(TEAPOT * 201)
    page.get_by_role("button", name="Save brief").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "name: String should have at most 200 characters"
    )
    expect(box).to_have_value(TEAPOT * 201)
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(box).to_be_focused()


def test_an_edit_in_the_review_queue_takes_as_many_characters_as_the_server_does(
    page: Page, site: Site
) -> None:
    """The edit box's maxlength of 1,000 stopped copy of emoji at 500."""
    experiment_id, edited = one_line_to_edit(site)
    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    page.get_by_label(f"edit #{edited}").fill(TEAPOT * 1000)
    row(page, edited).get_by_role("button", name="Save edit and approve").click()
    expect(flash(page)).to_have_text(f"Variant #{edited} edited and approved.")
    assert site.variant(edited).text == TEAPOT * 1000


def test_a_refused_persona_puts_the_cursor_in_its_box(page: Page, site: Site) -> None:
    """As on the New experiment page: the error is read with the box it is about."""
    experiment_id, _ = make_experiment(site)
    page.goto(f"/dashboard/experiments/{experiment_id}")
    section = page.locator("#segment-tea-lovers")
    section.get_by_label("Edit the persona of tea-lovers").click()
    section.get_by_role("textbox", name="Persona of tea-lovers").fill("Tea \u200b lovers")
    section.get_by_role("button", name="Save the persona of tea-lovers").click()

    box = page.locator("#segment-tea-lovers").get_by_role("textbox", name="Persona of tea-lovers")
    expect(box).to_be_focused()
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(box).to_have_value("Tea \u200b lovers")
    expect(box).to_have_accessible_description(re.compile("U\\+200B"))
    with site.session() as session:
        segment = find_segment(session=session, experiment_id=experiment_id, key="tea-lovers")
        assert segment.description == "People who are tea-lovers."


def test_a_persona_changed_in_another_browser_since_is_refused_keeping_both(
    page: Page, site: Site
) -> None:
    """Two marketers rewrite one persona: the second save replaced the first's without a word.
    Theirs has two lines, which the browser sends back with CRLF: saved again over it, knowingly,
    the form must not be taken for one drawn from another persona."""
    experiment_id, _ = make_experiment(site)
    page.goto(f"/dashboard/experiments/{experiment_id}")
    section = page.locator("#segment-tea-lovers")
    section.get_by_label("Edit the persona of tea-lovers").click()
    box = section.get_by_role("textbox", name="Persona of tea-lovers")
    box.fill("Tea at 80 °C, loose-leaf.")
    theirs = "Up at 5 a.m. for green tea.\nSteep it twice."
    with site.session() as session:
        update_segment(
            session=session,
            experiment_id=experiment_id,
            key="tea-lovers",
            description=theirs,
            by="ola@example.com",
        )

    with page.expect_response(re.compile(r"/segments/tea-lovers$")) as answer:
        section.get_by_role("button", name="Save the persona of tea-lovers").click()

    assert answer.value.status == 409
    section = page.locator("#segment-tea-lovers")
    expect(section.get_by_test_id("error")).to_have_text(
        "someone else changed the persona of 'tea-lovers' since this page was opened; it now "
        "reads as shown above, and what you typed is kept below: save it again to replace theirs"
    )
    expect(section.get_by_test_id("error")).to_be_focused()
    expect(section.get_by_test_id("persona")).to_have_text(theirs)
    box = section.get_by_role("textbox", name="Persona of tea-lovers")
    expect(box).to_have_value("Tea at 80 °C, loose-leaf.")
    assert site.segment_description(experiment_id, "tea-lovers") == theirs

    section.get_by_role("button", name="Save the persona of tea-lovers").click()

    expect(page.locator("#segment-tea-lovers .flash")).to_have_text(
        "Saved the persona of tea-lovers."
    )
    assert site.segment_description(experiment_id, "tea-lovers") == "Tea at 80 °C, loose-leaf."


def test_a_brief_box_changed_in_another_browser_since_is_refused_keeping_both(
    page: Page, site: Site
) -> None:
    """Two marketers set one brand voice: the second save replaced the first's without a word.
    The description has two lines, which the browser sends back with CRLF: saved again,
    knowingly, the form must not be taken for one drawn from another description."""
    experiment_id, _ = make_experiment(site)
    edit(site, experiment_id, product=ProductPatch(description="A glass kettle.\nBoils fast."))
    page.goto(f"/dashboard/experiments/{experiment_id}")
    page.get_by_text("Edit brief").click()
    page.get_by_label("Product description").fill("A glass kettle, 1.7 litres.")
    page.get_by_label("Brand voice (optional)").fill("Calm, precise.")
    edit(site, experiment_id, brand_voice="Playful.")

    with page.expect_response(re.compile(r"/brief$")) as answer:
        page.get_by_role("button", name="Save brief").click()

    assert answer.value.status == 409
    error = page.locator(".edit-brief").get_by_test_id("error")
    expect(error).to_have_text(
        "someone else changed the brand voice (now 'Playful.') since this page was opened; what "
        "you typed is kept below: save it again to replace theirs"
    )
    expect(error).to_be_focused()
    expect(page.get_by_label("Brand voice (optional)")).to_have_value("Calm, precise.")
    assert site.brand_voice(experiment_id) == "Playful."

    page.get_by_role("button", name="Save brief").click()

    expect(flash(page)).to_have_text("Saved the brief.")
    assert site.brand_voice(experiment_id) == "Calm, precise."
    expect(page.locator("p.product")).to_contain_text("A glass kettle, 1.7 litres.")


def edit(site: Site, experiment_id: int, **fields: Any) -> None:
    """Another marketer's edit of the brief, from their own browser."""
    with site.session() as session:
        update_experiment(
            session=session,
            experiment_id=experiment_id,
            patch=ExperimentPatch(**fields),
            by="ola@example.com",
        )


# --- untrusted copy -------------------------------------------------------------------------


def test_long_unbroken_text_wraps_inside_the_window(page: Page, site: Site) -> None:
    """Names, copy and reasons with nowhere to break (a pasted URL, a run-on line from the model)
    wrap instead of widening the page past the window."""
    eid, ids = make_experiment(
        site,
        active={"tea-lovers": ["Aurora kettle control.", "W" * 1000]},
        pending={"tea-lovers": ["Q" * 1000]},
    )
    with site.session() as session:
        experiment = session.get(Experiment, eid)
        assert experiment is not None
        experiment.name = "Ж" * 190 + str(eid)
        experiment.product_name = "P" * 200
        experiment.product_description = "D" * 5000
        session.add(experiment)
        segment = find_segment(session=session, experiment_id=eid, key="tea-lovers")
        session.add(
            LifecycleEvent(
                experiment_id=eid,
                segment_id=segment.id,
                variant_id=ids["tea-lovers"][1],
                action="pause",
                reason="R" * 2000,
            )
        )
        session.commit()
    for path in [
        "/dashboard/",
        f"/dashboard/experiments/{eid}",
        f"/dashboard/experiments/{eid}/review",
        f"/dashboard/experiments/{eid}/audit",
    ]:
        page.goto(path)
        scroll_width, window_width = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert scroll_width <= window_width, (path, scroll_width, window_width)
        # A table scrolls in a box of its own (for a phone), so it no longer widens the page
        # whatever its cells do: at this width each fits its box.
        boxes = page.locator(".table-scroll").evaluate_all(
            "boxes => boxes.map(b => [b.scrollWidth, b.clientWidth])"
        )
        assert boxes and all(inner <= outer for inner, outer in boxes), (path, boxes)


def test_every_page_fits_a_phone(page: Page, site: Site) -> None:
    """At 375 px the header squeezed the email to one letter a line and pushed Sign out past the
    window, the tables widened every page (the variants table to 772 px, its copy four letters a
    line and its buttons one), and the charts ran off the edge. Now the page keeps the window's
    width: the header wraps, a table scrolls sideways in its own box, a chart scales down."""
    eid, _ = make_experiment(
        site,
        active={"tea-lovers": ["Wherever the weekend takes you, the Aurora kettle is ready."]},
        pending={"tea-lovers": ["The Aurora kettle boils in three minutes flat."]},
    )
    page.set_viewport_size({"width": 375, "height": 800})
    for path in [
        "/dashboard/",
        f"/dashboard/experiments/{site.demo_id}",
        f"/dashboard/experiments/{eid}/review",
        f"/dashboard/experiments/{site.demo_id}/audit",
        "/dashboard/experiments/new",
    ]:
        page.goto(path)
        scroll_width, window_width = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert scroll_width <= window_width, (path, scroll_width, window_width)
        sign_out = page.get_by_role("button", name="Sign out").bounding_box()
        assert sign_out is not None and sign_out["x"] + sign_out["width"] <= 375, path
        who = page.locator("header .who")
        assert who.evaluate("e => e.getClientRects().length") == 1
        assert who.evaluate("e => e.getBoundingClientRect().height") < 30, path

    page.goto(f"/dashboard/experiments/{site.demo_id}")
    for box in page.locator("figure.chart > svg").evaluate_all(
        "svgs => svgs.map(s => s.getBoundingClientRect().right)"
    ):
        assert box <= 375
    # The copy keeps a reading width, and a button's word stays whole (one line of text high).
    widths = page.locator("table.variants td.copy").evaluate_all(
        "tds => tds.map(td => td.getBoundingClientRect().width)"
    )
    assert widths and min(widths) >= 150, widths
    pause = page.get_by_role("button", name=re.compile(r"^Pause #")).first
    pause.focus()
    box = pause.bounding_box()
    assert box is not None and box["height"] < 40, box
    # Reached by the keyboard, the button scrolls its table's box into view.
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375, box


def test_a_variants_origin_is_never_split_across_lines(page: Page, site: Site) -> None:
    """The id column is narrow, and letting every cell wrap at any letter let the table squeeze
    it: at 1280 px the README's screenshot showed "generate" over "d"."""
    eid, _ = make_experiment(
        site,
        active={
            "tea-lovers": [
                "Wherever the weekend takes you, the Aurora kettle keeps your tea hot and ready.",
                "Sure-footed mornings, every morning: meet your new weekend tea kettle.",
            ]
        },
        pending={
            "tea-lovers": [
                "The Aurora kettle boils in three minutes flat, so it's your go-to kettle for "
                "every loose-leaf morning and every busy afternoon."
            ]
        },
    )
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(f"/dashboard/experiments/{eid}")
    origins = page.locator("table.variants td.id small")
    expect(origins).to_have_text(["control", "manual", "generated"])
    lines = origins.evaluate_all("smalls => smalls.map(s => s.getClientRects().length)")
    assert lines == [1, 1, 1], lines


def test_a_variants_swatch_stays_beside_its_id(page: Page, site: Site) -> None:
    """The id column is as narrow as its longest word ("manual"): at 1280 px a served line's
    swatch and an id of two digits or more did not fit beside each other, and the swatch sat on
    a line of its own above "#13"."""
    eid, ids = make_experiment(
        site,
        active={
            "tea-lovers": [
                "Wherever the weekend takes you, the Aurora kettle keeps your tea hot and ready.",
                "Sure-footed mornings, every morning: meet your new weekend tea kettle.",
            ]
        },
    )
    set_counts(site, {ids["tea-lovers"][0]: (10_000, 300), ids["tea-lovers"][1]: (10_000, 1000)})
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(f"/dashboard/experiments/{eid}")
    cells = page.locator("table.variants td.id")
    expect(cells.locator("svg.swatch")).to_have_count(2)
    # The swatch's middle against the line of text holding the id.
    placed = cells.evaluate_all(
        """tds => tds.map(td => {
            const swatch = td.querySelector('svg.swatch').getBoundingClientRect();
            const id = [...td.childNodes].find(
                n => n.nodeType === Node.TEXT_NODE && n.textContent.includes('#'));
            const range = document.createRange();
            range.selectNodeContents(id);
            const line = range.getClientRects()[0];
            const middle = swatch.top + swatch.height / 2;
            return [id.textContent.trim(), line.top <= middle && middle <= line.bottom];
        })"""
    )
    assert sorted(placed) == sorted([f"#{i}", True] for i in ids["tea-lovers"]), placed


@pytest.mark.parametrize("width", [900, 960, 1024])
def test_the_variants_table_fits_a_900_to_1024_px_window_without_scrolling(
    page: Page, site: Site, width: int
) -> None:
    """Kept a reading width for a phone, the copy column made the narrowest table 965 px, in a
    942 px box at 1024 px: a pending row's Approve button sat past the edge, reached only by
    scrolling sideways. Counts of seven digits widen their columns: with them, and the interval
    bar's fixed 160 px, the narrowest table was 956 px, wider than the box of a window under
    1040 px. They fit down to 900 px."""
    eid, ids = make_experiment(
        site,
        active={"tea-lovers": ["Wherever the weekend takes you, the Aurora kettle is ready."]},
        pending={"tea-lovers": ["The Aurora kettle boils in three minutes flat, every morning."]},
    )
    set_counts(site, {ids["tea-lovers"][0]: (9_999_999, 999_999)})
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"/dashboard/experiments/{eid}")
    approve = page.get_by_role("button", name=re.compile(r"^Approve"))
    expect(approve.first).to_be_visible()
    inner, outer = page.locator(".table-scroll").first.evaluate(
        "box => [box.scrollWidth, box.clientWidth]"
    )
    assert inner <= outer, (inner, outer)
    box = approve.first.bounding_box()
    assert box is not None and box["x"] + box["width"] <= width, box


def test_a_variants_status_words_are_never_split(page: Page, site: Site) -> None:
    """At 768 px (a tablet) the variants table is squeezed to its narrowest, and its status cell
    wrapped at any letter: "pendin" over "g review", "generat" over "ed by job 1"."""
    eid, _ = make_experiment(
        site,
        active={"tea-lovers": ["Wherever the weekend takes you, the Aurora kettle is ready."]},
        pending={"tea-lovers": ["The Aurora kettle boils in three minutes flat, every morning."]},
    )
    page.set_viewport_size({"width": 768, "height": 900})
    page.goto(f"/dashboard/experiments/{eid}")
    statuses = page.locator("table.variants td.status")
    expect(statuses).to_have_count(2)
    # Each word's own lines: 1 where it is whole; a word broken in two spans two.
    split = statuses.evaluate_all(
        """tds => tds.flatMap(td => {
            const found = [];
            const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                for (const match of node.textContent.matchAll(/\\S+/g)) {
                    const range = document.createRange();
                    range.setStart(node, match.index);
                    range.setEnd(node, match.index + match[0].length);
                    found.push([match[0], range.getClientRects().length]);
                }
            }
            return found;
        })"""
    )
    words = [word for word, _ in split]
    assert {"pending", "review", "active"} <= set(words), words
    assert [word for word, lines in split if lines != 1] == [], split


def test_a_long_address_in_a_variants_reason_keeps_the_table_in_its_box(
    page: Page, site: Site
) -> None:
    """The dashboard writes who changed a variant into its reason ("paused by <address>"), and
    the API takes any reason: kept whole as the status words are, an address of 70 letters
    widened the status column until the table scrolled sideways at 1280 px, its Pause and
    Retire buttons out of sight, and a URL in a reason did it at 1024 px."""
    email = "alexandra.konstantinopoulou.whitfield@marketing.northwindoutfitters.example"
    eid, ids = make_experiment(
        site,
        active={
            "tea-lovers": [
                "Wherever the weekend takes you, the Aurora kettle is ready.",
                "Boil less, sip more: the Aurora kettle.",
                "The Aurora kettle boils in three minutes flat, every morning.",
            ]
        },
    )
    with site.session() as session:
        update_variant(
            session=session,
            variant_id=ids["tea-lovers"][1],
            patch=VariantPatch(status=VariantStatus.PAUSED, reason=f"paused by {email}"),
            by=email,
        )
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(f"/dashboard/experiments/{eid}")
    paused = page.locator(f"tr[data-variant-id='{ids['tea-lovers'][1]}'] small.reason")
    expect(paused).to_have_text(f"paused by {email}")
    box = page.locator(".table-scroll").evaluate("b => [b.scrollWidth, b.clientWidth]")
    assert box[0] <= box[1], box
    # The service's own words beside it still keep whole.
    others = page.locator("tr.status-active small.reason")
    expect(others).to_have_text(["added by hand", "added by hand"])
    lines = others.evaluate_all("smalls => smalls.map(s => s.getClientRects().length)")
    assert lines == [1, 1], lines


def test_an_audit_rows_action_is_never_split_across_lines(page: Page, site: Site) -> None:
    """The action column is narrow, and a reason beside it took the width: at 1300 px a live
    run's audit page showed "regener" over "ate" on every regenerate row, and at 1280 px
    "declare_winner" broke in two."""
    eid, ids = make_experiment(site, active={"tea-lovers": ["Aurora kettle control."]})
    with site.session() as session:
        segment = find_segment(session=session, experiment_id=eid, key="tea-lovers")
        for action in ["regenerate", "declare_winner"]:
            session.add(
                LifecycleEvent(
                    experiment_id=eid,
                    segment_id=segment.id,
                    variant_id=ids["tea-lovers"][0] if action == "declare_winner" else None,
                    action=action,
                    reason="2 live variants, target 5: asking the model for 3 more; ordering"
                    " again after 2 failed jobs in a row",
                    numbers={"failed_in_a_row": 2, "job_id": 16, "live": 2, "n": 3},
                )
            )
        session.commit()
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(f"/dashboard/experiments/{eid}/audit")
    actions = page.locator("table td.action")
    expect(actions.first).to_be_visible()
    words = actions.all_text_contents()
    lines = page.evaluate(
        "tds => tds.map(td => { const r = document.createRange(); r.selectNodeContents(td);"
        " return r.getClientRects().length; })",
        actions.element_handles(),
    )
    assert {"regenerate", "declare_winner"} <= set(words), words
    assert set(lines) == {1}, list(zip(words, lines, strict=True))


@pytest.fixture
def csp_off_tab(browser: Browser, site: Site, signed_in_state: dict[str, Any]) -> Iterator[Tab]:
    # The pages' CSP would stop an injected script on its own; with it bypassed, only escaping
    # stands between the copy and the browser, so a missed escape opens a dialog.
    with open_tab(browser, site, bypass_csp=True, storage_state=signed_in_state) as tab:
        yield tab


def _assert_inert(page: Page) -> None:
    scripts = page.locator("script").evaluate_all("ss => ss.map(s => s.textContent)")
    assert not [s for s in scripts if "alert(1)" in s], scripts
    expect(page.locator("img[onerror]")).to_have_count(0)
    expect(page.locator('img[src="x"]')).to_have_count(0)


def test_copy_with_markup_renders_as_text(csp_off_tab: Tab, site: Site) -> None:
    page, dialogs = csp_off_tab.page, csp_off_tab.dialogs
    experiment_id, ids = make_experiment(
        site,
        active={"tea-lovers": ["The Aurora kettle: tea, sooner.", SCRIPT_TEXT, IMG_TEXT]},
        pending={"tea-lovers": [SCRIPT_TEXT + " pending", IMG_TEXT + " pending"]},
    )
    _, script_id, img_id, pending_script, pending_img = ids["tea-lovers"]

    response = page.goto(f"/dashboard/experiments/{experiment_id}")
    assert response is not None
    assert "default-src 'none'" in response.headers["content-security-policy"]
    expect(row(page, script_id).locator("td.copy")).to_have_text(SCRIPT_TEXT)
    expect(row(page, img_id).locator("td.copy")).to_have_text(IMG_TEXT)
    expect(page.locator("main")).to_contain_text(SCRIPT_TEXT)
    expect(page.locator("main")).to_contain_text(IMG_TEXT)
    _assert_inert(page)

    page.goto(f"/dashboard/experiments/{experiment_id}/review")
    expect(row(page, pending_script).locator("p.text")).to_have_text(SCRIPT_TEXT + " pending")
    expect(row(page, pending_img).locator("p.text")).to_have_text(IMG_TEXT + " pending")
    # The edit box holds the raw text, so an edit does not double-escape it.
    expect(page.get_by_label(f"edit #{pending_img}")).to_have_value(IMG_TEXT + " pending")
    _assert_inert(page)

    assert dialogs == [], f"copy ran as script: {dialogs}"


# --- keyboard and screen readers ------------------------------------------------------------


def test_a_refused_new_experiment_puts_the_cursor_in_the_box_to_fix(page: Page) -> None:
    """The error is read with the box it is about, where the cursor lands, as a screen reader
    meets it; the cursor was at the top of the page, the error tied to no box."""
    page.goto("/dashboard/experiments/new")
    page.get_by_label("Experiment name").fill(f"Aurora kettle launch {next(_names)}")
    page.get_by_label("Product name").fill("Aurora kettle")
    page.get_by_label("Product description").fill("A 1.7 l glass kettle.")
    page.get_by_label("Price (optional)").fill("forty-nine")
    page.get_by_label("Segments, one per line").fill("tea-lovers: Brew loose-leaf tea daily.")
    page.get_by_role("button", name="Create experiment").click()

    expect(page.get_by_role("alert")).to_have_text(PRICE_RULE)
    price = page.get_by_label("Price (optional)")
    expect(price).to_be_focused()
    expect(price).to_have_value("forty-nine")
    expect(price).to_have_accessible_description(PRICE_RULE)
    expect(price).to_have_attribute("aria-invalid", "true")
    # Typing goes straight into the box.
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type("49")
    expect(price).to_have_value("49")


def test_a_wrong_password_is_read_with_the_box_the_cursor_is_in(guest: Page) -> None:
    """The error was an alert tied to neither box: a screen reader moving back to the email or
    password heard no reason to change it."""
    page = guest
    sign_in(page, password="not-the-password")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    email, password = page.get_by_label("Email"), page.get_by_label("Password")
    expect(email).to_be_focused()
    for box in (email, password):
        expect(box).to_have_accessible_description("Wrong email or password.")


def start_a_job(page: Page, site: Site) -> tuple[int, str]:
    """From a new experiment's page, a job for two lines for tea-lovers: the experiment's id and
    the job page's path, where the page lands."""
    experiment_id, _ = make_experiment(
        site, active={"tea-lovers": ["The Aurora kettle: tea, sooner."]}
    )
    page.goto(f"/dashboard/experiments/{experiment_id}")
    page.get_by_label("Have the model write this many more for tea-lovers").fill("2")
    page.get_by_role("button", name="Generate for tea-lovers").click()
    expect(page).to_have_url(re.compile(r"/dashboard/jobs/\d+$"))
    return experiment_id, path_of(page)


def test_a_running_jobs_page_updates_in_place_then_shows_the_result(page: Page, site: Site) -> None:
    """The page reloaded itself every 2 seconds: a screen reader started again from the top each
    time, and the keyboard focus was lost. Now the status line changes in place, read out as a
    polite live region, and the page reloads once, when the job is done, to show its result."""
    _, job_path = start_a_job(page, site)
    status = page.get_by_role("status").filter(has_text="—")
    bar = page.get_by_role("progressbar", name="Progress")
    try:
        # The writer waits for its first round: the job is running its first segment.
        expect(status).to_have_text(re.compile(r"running — segment tea-lovers: sampling round 1/"))
        page.evaluate("window.notReloaded = true")
        back = page.get_by_role("link", name=re.compile("Aurora kettle launch"))
        back.focus()

        site.writer.rounds.put(["Brew every cup right with the Aurora kettle."])
        expect(status).to_have_text(
            re.compile(r"running — segment tea-lovers: round 1/\d+, 1/2 accepted")
        )
        expect(page).to_have_title(re.compile(r"^Generation job \d+: running · copybandit$"))
        assert float(bar.get_attribute("value") or 0) > 0
        assert page.evaluate("window.notReloaded") is True, "the page reloaded itself"
        expect(back).to_be_focused()
        expect(page.locator(".job-poll-problem")).to_have_text("")

        site.writer.rounds.put(["Tea lovers, meet the Aurora kettle."])
        # Done: the page reloads once and the server draws the result.
        expect(page.locator("p.job-status")).to_have_attribute("data-status", "succeeded")
        expect(page.get_by_role("link", name="Review the new copy")).to_be_visible()
        expect(page).to_have_title(re.compile(r"^Generation job \d+: succeeded · copybandit$"))
        assert path_of(page) == job_path
        assert page.evaluate("window.notReloaded") is None
        # Nothing follows a finished job.
        expect(page.locator("script")).to_have_count(0)
    finally:
        site.writer.finish_the_job(site.jobs)


def a_running_job_row(site: Site) -> int:
    """A job whose row says running in a new experiment, with no worker behind it."""
    experiment_id, _ = make_experiment(site)
    with site.session() as session:
        job = GenerationJob(experiment_id=experiment_id, n=2, status="running", message="round 1")
        session.add(job)
        session.commit()
        return job.id  # type: ignore[return-value]


def test_a_queued_jobs_page_says_queued_once(page: Page, site: Site) -> None:
    """A job started by hand has the message "queued" until a worker takes it, and its page read
    "queued — queued", for minutes where it waited behind another job. The status says it once;
    the message shows once it says more than the status."""
    experiment_id, _ = make_experiment(site)
    with site.session() as session:
        job = GenerationJob(experiment_id=experiment_id, n=2)
        session.add(job)
        session.commit()
        job_id = job.id
    page.goto(f"/dashboard/jobs/{job_id}")
    status = page.locator("p.job-status")
    expect(status).to_have_attribute("data-status", "queued")
    expect(status).to_have_text("queued", use_inner_text=True)

    with site.session() as session:
        running = session.get(GenerationJob, job_id)
        assert running is not None and running.message == "queued"
        running.status, running.message = "running", "loading the model"
        session.commit()
    expect(status).to_have_text("running — loading the model", use_inner_text=True)


def test_a_jobs_page_says_when_it_cannot_follow_the_job(page: Page, site: Site) -> None:
    """A failed check is said on the page, and the next comes later each time, not every 2
    seconds forever; signed out, the page stops and says how to sign in again."""
    job_id = a_running_job_row(site)
    progress = f"**/dashboard/jobs/{job_id}/progress"
    page.route(progress, lambda route: route.fulfill(status=503, body="down"))
    # The page's timers run on a clock the test moves: waited out for real, the backoff alone
    # took 14 of the test's 16 seconds. Paused, or the clock also ran on real time, and on a busy
    # machine the next check came before the test looked for the message it replaced.
    now = datetime.now(UTC)
    page.clock.install(time=now)
    page.clock.pause_at(now + timedelta(seconds=1))
    page.goto(f"/dashboard/jobs/{job_id}")
    problem = page.locator(".job-poll-problem")
    page.clock.run_for(2_000)
    expect(problem).to_have_text(
        "Could not check the job's progress (the server answered 503); trying again in 4 seconds."
    )
    page.unroute(progress)
    page.route(progress, lambda route: route.abort())
    page.clock.run_for(3_900)
    expect(problem).to_contain_text("trying again in 4 seconds")  # not asked again before then
    page.clock.run_for(100)
    expect(problem).to_have_text(
        "Could not check the job's progress (no answer from the server); trying again in 8 seconds."
    )
    page.evaluate("window.notReloaded = true")
    page.unroute(progress)
    with site.session() as session:
        session.execute(
            sa.update(GenerationJob)
            .where(GenerationJob.id == job_id)  # type: ignore[arg-type]
            .values(message="round 2", progress=0.5)
        )
        session.commit()
    # Back: the problem goes and the status catches up, still without a reload.
    page.clock.run_for(8_000)
    expect(page.locator("p.job-status")).to_have_text("running — round 2")
    expect(problem).to_have_text("")
    assert page.evaluate("window.notReloaded") is True

    page.context.clear_cookies()
    page.clock.run_for(2_000)
    expect(problem).to_contain_text("You are signed out")
    sign_in_again = problem.get_by_role("link", name="Sign in again")
    expect(sign_in_again).to_have_attribute("href", f"/dashboard/jobs/{job_id}")
    assert page.evaluate("window.notReloaded") is True


def test_a_jobs_page_stops_following_a_job_that_is_not_there(page: Page, site: Site) -> None:
    """The progress address answered 404 (the job deleted, or the database restored from before
    it), and the page asked again every minute forever, still saying running."""
    job_id = a_running_job_row(site)
    # Counts the polls the page schedules: the first at load, then one after each answer.
    page.add_init_script(
        "window.polls = 0; const later = window.setTimeout.bind(window);"
        " window.setTimeout = (f, ms) => { window.polls += 1; return later(f, ms); };"
    )
    page.route(
        f"**/dashboard/jobs/{job_id}/progress",
        lambda route: route.fulfill(status=404, json={"error": "not_found"}),
    )
    page.goto(f"/dashboard/jobs/{job_id}")

    expect(page.locator(".job-poll-problem")).to_have_text(
        "This job no longer exists (the server answered 404), so this page has stopped "
        "following it."
    )
    assert page.evaluate("window.polls") == 1


def test_cancel_a_running_job_from_its_page(page: Page, site: Site) -> None:
    experiment_id, job_path = start_a_job(page, site)
    status = page.locator("p.job-status")
    try:
        expect(status).to_have_text(re.compile(r"running — segment tea-lovers: sampling round 1/"))

        page.get_by_role("button", name="Cancel").click()

        expect(status).to_have_attribute("data-status", "cancelled")
        expect(status).to_have_text(f"cancelled — cancelled by {EMAIL}; it had stored no copy yet")
        expect(page).to_have_title(re.compile(r"^Generation job \d+: cancelled · copybandit$"))
        assert path_of(page) == job_path
        expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
        expect(page.locator("script")).to_have_count(0)
    finally:
        # The model's round ends; the job stops there and stores nothing.
        site.writer.finish_the_job(site.jobs)
    with site.session() as session:
        generated = session.exec(
            select(Variant).where(
                Variant.experiment_id == experiment_id, Variant.origin == Origin.GENERATED
            )
        ).all()
        job = session.get(GenerationJob, int(job_path.rsplit("/", 1)[1]))
    assert generated == []
    assert job is not None and job.status == "cancelled"


# --- a held brief, and the list's pages ------------------------------------------------------


def test_a_held_segment_s_generate_button_is_off_and_says_why_beside_it(
    page: Page, site: Site, tmp_path: Path
) -> None:
    """It was on: pressing it loaded the page again with the refusal, the job never queued."""
    experiment_id, _ = make_experiment(
        site,
        segments=("tea-lovers", "busy-parents"),
        active={"tea-lovers": ["Aurora: tea, sooner."], "busy-parents": ["Aurora: fast."]},
    )
    with site.session() as session:
        held_as_too_long(session, {"id": experiment_id}, "tea-lovers", site.settings.model)
    page.goto(f"/dashboard/experiments/{experiment_id}")

    held = page.locator("#segment-tea-lovers form.generate")
    button = held.get_by_role("button", name="Generate for tea-lovers")
    why = (
        "segment 'tea-lovers' gets no new copy: brief too long for the model: 6,453 tokens of "
        "4,096; shorten it (the product description, brand voice or the segment's persona), or "
        "configure a model with a longer context"
    )
    expect(button).to_be_disabled()
    expect(held.get_by_role("spinbutton")).to_be_disabled()
    expect(button).to_have_accessible_description(why)
    note = held.get_by_test_id("generate-held")
    expect(note).to_have_text(why)
    # Beside the button: under it, within the form, no wider than the copy box.
    under, box = button.bounding_box(), note.bounding_box()
    assert under is not None and box is not None
    assert under["y"] + under["height"] <= box["y"] < under["y"] + under["height"] + 40
    assert box["width"] <= 26 * 16 + 1
    held.screenshot(path=tmp_path / "held.png")

    free = page.locator("#segment-busy-parents form.generate")
    expect(free.get_by_role("button", name="Generate for busy-parents")).to_be_enabled()
    expect(free.get_by_test_id("generate-held")).to_have_count(0)


def test_an_empty_segment_says_its_copy_is_on_order_and_links_to_the_job(
    page: Page, site: Site
) -> None:
    """With a job queued for a segment with no copy, the page said only that none was served."""
    experiment_id, _ = make_experiment(
        site, segments=("tea-lovers", "busy-parents"), active={"busy-parents": ["Aurora: fast."]}
    )
    with site.session() as session:
        segment = find_segment(session=session, experiment_id=experiment_id, key="tea-lovers")
        job = GenerationJob(experiment_id=experiment_id, segment_id=segment.id, n=4)
        session.add(job)
        session.commit()
    page.goto(f"/dashboard/experiments/{experiment_id}")

    tea = page.locator("#segment-tea-lovers")
    expect(tea).to_contain_text("No copy is being served in this segment yet.")
    note = tea.get_by_test_id("on-order")
    expect(note).to_be_visible()
    expect(note).to_have_text(f"Copy on order: job #{job.id} (queued, 0 of 4 lines).")
    expect(page.locator("#segment-busy-parents").get_by_test_id("on-order")).to_have_count(0)

    note.get_by_role("link", name=f"job #{job.id}").click()
    expect(page).to_have_url(f"{site.base_url}/dashboard/jobs/{job.id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Generation job {job.id}")
    with site.session() as session:
        # Nothing runs it: ended, so no later test finds it queued.
        ended = session.get_one(GenerationJob, job.id)
        ended.status = "cancelled"
        session.add(ended)
        session.commit()


def test_the_experiment_list_pages_forward_and_back(page: Page, site: Site) -> None:
    """Thousands of experiments were drawn on one page. The experiments made here are removed
    afterwards, so the other tests' lists stay one page long."""
    with site.session() as session:
        there = session.exec(select(sa.func.count()).select_from(Experiment)).one()
    made = [
        make_experiment(site)[0]
        for _ in range(max(0, experiment_pages.EXPERIMENTS_PAGE + 5 - there))
    ]
    try:
        with site.session() as session:
            total = session.exec(select(sa.func.count()).select_from(Experiment)).one()
            newest = session.exec(
                select(Experiment.name).order_by(col(Experiment.id).desc()).limit(1)
            ).one()
        page.goto("/dashboard/")
        rows = page.locator("table.list tbody tr")
        pages = page.get_by_role("navigation", name="Pages of experiments")
        expect(rows).to_have_count(experiment_pages.EXPERIMENTS_PAGE)
        expect(rows.first).to_contain_text(newest)  # newest first
        expect(page.get_by_role("link", name=DEMO["name"])).to_have_count(0)
        expect(pages).to_contain_text(f"1\u201350 of {total}, newest first")
        expect(pages.get_by_role("link", name="← Previous")).to_have_count(0)

        pages.get_by_role("link", name="Next →").click()
        expect(rows).to_have_count(total - experiment_pages.EXPERIMENTS_PAGE)
        expect(rows.last).to_contain_text(DEMO["name"])  # the oldest, last
        expect(pages).to_contain_text(f"51\u2013{total} of {total}")
        expect(pages.get_by_role("link", name="Next →")).to_have_count(0)

        pages.get_by_role("link", name="← Previous").click()
        expect(rows).to_have_count(experiment_pages.EXPERIMENTS_PAGE)
        expect(rows.first).to_contain_text(newest)
    finally:
        with site.session() as session:
            session.execute(sa.delete(Segment).where(col(Segment.experiment_id).in_(made)))
            session.execute(sa.delete(Experiment).where(col(Experiment.id).in_(made)))
            session.commit()
