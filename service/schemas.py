"""What the HTTP API accepts and returns. These pydantic classes are the OpenAPI schema too.

Request models are strict (no "1" for 1, no 1 for true), refuse unknown fields and NaN, and refuse
control characters in text: PostgreSQL cannot store NUL, and nothing a storefront shows needs them.
Text people write (names, descriptions, copy, reasons) is stored stripped and in Unicode NFC, and
refused with a bidi override or another invisible character that disguises it; keys a client
compares (event_id, user_id) are kept exactly as sent.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
    with_config,
)

# pydantic reads TypedDicts from typing_extensions only, before Python 3.12.
from typing_extensions import TypedDict

from generation.clean import CONTROL_CHARACTERS
from service.errors import at_fault
from service.integers import describe_integers
from service.models import MAX_DB_ID, JobStatus, Origin, VariantStatus
from service.policy import LifecyclePolicy

MAX_BATCH_EVENTS = 1000
# An experiment's segments, at creation and as added later.
MAX_SEGMENTS = 50


def _no_control(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters")
    return value


# Refused in copy wherever they are: the overrides LRO and RLO (after U+202E a storefront draws the
# rest of the line backwards, not as the marketer who reviewed it read it), the deprecated shaping
# controls, the zero-width space and the byte-order mark, which only change or hide what is shown.
# Escapes, not the characters: ECMA-262 reads them alike, and the published pattern stays legible.
_REFUSED_FORMATTING_CLASS = r"\u200b\u202d\u202e\u206a-\u206f\ufeff"
_REFUSED_FORMATTING = re.compile(f"[{_REFUSED_FORMATTING_CLASS}]")
# Embeddings (LRE, RLE; closed by PDF) and isolates (LRI, RLI, FSI; closed by PDI) are how W3C
# says to embed text of the other direction (an English product name in Arabic copy), and a CMS
# writes them: accepted when each is closed inside the copy, so its direction cannot spill into
# the page the copy is served into.
_CLOSER_OF = {
    "\u202a": "\u202c",
    "\u202b": "\u202c",
    "\u2066": "\u2069",
    "\u2067": "\u2069",
    "\u2068": "\u2069",
}
_KIND_CLOSED = {"\u202c": "embedding", "\u2069": "isolate"}


def no_invisible_formatting(value: str) -> str:
    """Copy is served as it is stored, into a page whose text it must leave as it is; a name or a
    description is shown on the dashboard's pages and in the API's answers, where an override
    made it read as something else."""
    found = _REFUSED_FORMATTING.search(value)
    if found:
        raise ValueError(
            f"must not contain the invisible formatting character U+{ord(found.group()):04X} "
            "(bidi overrides, zero-width spaces, byte-order marks and the deprecated U+206A-U+206F "
            "change or hide what is shown)"
        )
    problem = _unbalanced_bidi(value)
    if problem:
        raise ValueError(f"must close every bidi embedding and isolate it opens: {problem}")
    return value


def any_format_character(value: str) -> str | None:
    """The first invisible formatting character (Unicode's Cf: bidi marks, embeddings and
    isolates included, zero-width joiners) in `value`, or None: refused outright where no
    formatting is wanted at all, as in a web address or an email address."""
    return next((char for char in value if unicodedata.category(char) == "Cf"), None)


def _unbalanced_bidi(value: str) -> str | None:
    """What leaves a bidi embedding or isolate in `value` open or closes one it did not open, or
    None when each opener is closed by its own closer, properly nested."""
    opened: list[str] = []
    for character in value:
        if character in _CLOSER_OF:
            opened.append(character)
        elif character in _KIND_CLOSED:
            kind = _KIND_CLOSED[character]
            if not any(_CLOSER_OF[opener] == character for opener in opened):
                return f"U+{ord(character):04X} closes no {kind} opened before it"
            inner = opened.pop()
            if _CLOSER_OF[inner] != character:
                return (
                    f"U+{ord(inner):04X} is not closed by U+{ord(_CLOSER_OF[inner]):04X} "
                    f"before U+{ord(character):04X} closes the {kind} around it"
                )
    if opened:
        last = opened[-1]
        return f"U+{ord(last):04X} is not closed by U+{ord(_CLOSER_OF[last]):04X}"
    return None


def _normalized(value: Any) -> Any:
    """ "Café" typed with a combining accent is the same name as with a precomposed é, and is
    stored as one text, not two that read alike. Before the length limits: NFC can lengthen text
    (U+FB2C becomes three code points), and a name past its column's width was a 500.

    Line breaks are stored as LF, as the API's clients send them: a browser sends a textarea's as
    CRLF, and the dashboard's boxes, when they had a maxlength, counted each as one character, so
    copy that fit the box came to the server longer than its limit, and was refused."""
    if not isinstance(value, str):
        return value
    return unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n"))


def stored_form(text: str) -> str:
    """`text` as text people write is stored: NFC, LF line breaks, stripped. For comparing what
    was sent with a row stored before that rule held."""
    return _normalized(text).strip()


def _clean(value: str) -> str:
    return _not_blank(_no_control(value).strip())


def _not_blank(value: str) -> str:
    if not any(_visible(character) for character in value):
        raise ValueError("must not be blank")
    return value


def _visible(character: str) -> bool:
    # Zero-width and other format characters (U+200B, U+2060, U+FEFF) and the fillers show
    # nothing: a name made only of them is as blank as one made of spaces.
    return (
        not character.isspace()
        and unicodedata.category(character) != "Cf"
        and not _DRAWN_AS_NOTHING.match(character)
    )


# Unicode's default-ignorable letters and marks (fonts draw them as nothing) that are not format
# characters: Hangul fillers, the combining grapheme joiner, Khmer inherent vowels, variation
# selectors; and the blank Braille pattern.
_DRAWN_AS_NOTHING = re.compile(
    "[\u115f\u1160\u3164\uffa0\u034f\u17b4\u17b5\u180b-\u180f\u2800"
    "\ufe00-\ufe0f\U000e0100-\U000e01ef]"
)


_Normalized = BeforeValidator(_normalized)
_Clean = AfterValidator(_clean)
# One rule for all text people write, not copy alone: names and descriptions took U+202E, after
# which the dashboard and the API's answers showed "Sale\u202e2024 TSAL" as "Sale LAST 4202".
_Unformatted = AfterValidator(no_invisible_formatting)
# Kept exactly as sent (a user id's hash must not change), only refused with a control character.
_NoControl = AfterValidator(_no_control)
# _no_control's rule as the published schemas say it, in ECMA-262 (JSON Schema's dialect, which
# reads \xHH as Python does): a client checked against /openapi.json, or generated from it, sent
# an event_id or a user_id with U+0001 in it and got a 400 the document did not foretell.
_CONTROL_CLASS = CONTROL_CHARACTERS.pattern[1:-1]
NO_CONTROL_PATTERN = f"^[^{_CONTROL_CLASS}]*$"
# The same for text people write, which also refuses the invisible formatting it always refuses:
# the schemas published only lengths, so a name with U+0007, or copy with U+202E, that a client
# had checked against /openapi.json got a 400. Balance and blankness are the description's.
_TEXT_RULES = Field(
    description="stored without surrounding spaces, in Unicode NFC, with line breaks as LF; "
    "refused with a control character or an invisible formatting character (the pattern's), a "
    "bidi embedding or isolate it does not close, or only spaces and invisible characters",
    json_schema_extra={"pattern": f"^[^{_CONTROL_CLASS}{_REFUSED_FORMATTING_CLASS}]*$"},
)
_Text = (_TEXT_RULES, _Normalized, _Clean, _Unformatted)
Name = Annotated[str, Field(min_length=1, max_length=200), *_Text]
Persona = Annotated[str, Field(min_length=1, max_length=2000), *_Text]
LongText = Annotated[str, Field(min_length=1, max_length=5000), *_Text]
CopyText = Annotated[str, Field(min_length=1, max_length=1000), *_Text]
Reason = Annotated[str, Field(min_length=1, max_length=500), *_Text]


def _client_key(value: str) -> str:
    # Printable ASCII that is not all spaces has neither control characters nor only invisible
    # ones: most keys are that, and the character-by-character checks were about half of a
    # 1,000-event batch's validation (2.1 ms of it, 1.1 without them).
    if value.isascii() and value.isprintable() and not value.isspace():
        return value
    return _not_blank(_no_control(value))


# Compared exactly, so kept exactly: stripped, " ord-1 " and "ord-1" were one key, and the second
# of two real conversions was counted as a duplicate of the first.
ClientKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        # Blank is more than the pattern can say without the u flag: the description does.
        description="compared exactly as sent (spaces and case count); a repeat is a duplicate; "
        "one with a control character (the pattern's), or of spaces and invisible characters "
        "alone, is refused",
        json_schema_extra={"pattern": NO_CONTROL_PATTERN},
    ),
    AfterValidator(_client_key),
]


# A larger number can only be a client error, never a 500.
DbId = Annotated[int, Field(ge=1, le=MAX_DB_ID)]
SegmentKey = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]


def _digits_only(value: Any) -> Any:
    """Query values arrive as text, and pydantic reads text as int() does: '1_000', '+5' and
    ' 7 ' all passed as ids."""
    if isinstance(value, str) and not (value.isascii() and value.isdecimal()):
        raise ValueError("must be a whole number written in the digits 0-9")
    return value


QueryId = Annotated[DbId, BeforeValidator(_digits_only)]
ImpressionId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class Request(BaseModel):
    # Strict: an integer field refuses 1.0, which its published description says.
    model_config = ConfigDict(
        strict=True, extra="forbid", allow_inf_nan=False, json_schema_extra=describe_integers
    )


_NOT_NULL = {"not": {"type": "null"}}


def _one_of(*forms: tuple[tuple[str, ...], tuple[str, ...]]) -> dict[str, Any]:
    """JSON Schema for a body that takes exactly one of these forms, each the fields it needs and
    the fields it refuses. Null is not given, as the server reads it: a needed field may not be
    null, and a refused one may be absent or null."""
    return {
        "oneOf": [
            {
                "required": list(needs),
                "properties": {f: _NOT_NULL for f in needs},
                "not": {
                    "anyOf": [{"required": [f], "properties": {f: _NOT_NULL}} for f in refuses]
                },
            }
            for needs, refuses in forms
        ]
    }


# --- experiments -------------------------------------------------------------------------------


# A scheme is case-insensitive (RFC 3986, 3.1): HTTPS://shop.example is a web address. Spelled out
# letter by letter, not with an inline flag, so the OpenAPI document's pattern stays ECMA-262.
_WEB_ADDRESS = r"^[hH][tT][tT][pP][sS]?://\S+$"
# As published, with the control characters _Clean refuses after it: "https://a\x01" was valid by
# the document and a 400 from the server.
_PUBLISHED_WEB_ADDRESS = rf"^[hH][tT][tT][pP][sS]?://[^\s{_CONTROL_CLASS}]+$"


def _web_address(value: str) -> str:
    # Checked here rather than by Field(pattern=...): pydantic's refusal quotes the regex.
    # fullmatch: re's $ also matches before a final newline, which ECMA-262's does not, so
    # "https://shop.example/a\n" was refused by the published pattern and stored (stripped).
    if not re.fullmatch(_WEB_ADDRESS, value):
        raise ValueError("must start with http:// or https:// and contain no spaces")
    # Shown as a link on the dashboard: U+202E in "https://shop.example/\u202egpj.exe" showed
    # "exe.jpg", and a zero-width space hid where the address really went. Unlike in names, no
    # embedding is wanted in an address, balanced or not.
    hidden = any_format_character(value)
    if hidden is not None:
        raise ValueError(
            f"must not contain the invisible formatting character U+{ord(hidden):04X} "
            "(it changes or hides where the address seems to go)"
        )
    return value


WebAddress = Annotated[
    str,
    Field(
        max_length=2000,
        # The pattern cannot say it in ECMA-262 without the u flag: the description does.
        description="An http:// or https:// address with no spaces and no invisible formatting "
        "characters (Unicode category Cf: bidi controls, zero-width spaces, U+FEFF); one with "
        "either is refused.",
        json_schema_extra={"pattern": _PUBLISHED_WEB_ADDRESS},
    ),
    AfterValidator(_web_address),
    _Clean,
]


class ProductIn(Request):
    name: Name
    description: LongText
    price: float | None = Field(default=None, ge=0, le=1e9)
    url: WebAddress | None = None


class SegmentIn(Request):
    key: SegmentKey
    description: Persona


class ExperimentCreate(Request):
    name: Name
    product: ProductIn
    segments: list[SegmentIn] = Field(
        min_length=1,
        max_length=MAX_SEGMENTS,
        # uniqueItems cannot say it: two segments alike but for their descriptions are refused.
        description="each with a key of its own; the first is the default",
    )
    sticky: bool = False
    brand_voice: Reason | None = Field(default=None, description="how the copy should sound")
    auto_approve: bool = Field(default=False, description="serve generated copy without review")
    policy: LifecyclePolicy | None = Field(default=None, description="lifecycle rules; defaults")

    @field_validator("segments")
    @classmethod
    def _unique_segment_keys(cls, segments: list[SegmentIn]) -> list[SegmentIn]:
        keys = [segment.key for segment in segments]
        if len(set(keys)) != len(keys):
            raise ValueError("segment keys must be unique")
        return segments


# Fields a PATCH of the experiment refuses by name, with where to change them instead: as unknown
# fields they were refused as "Extra inputs are not permitted", which says nothing of why.
_NOT_EDITED_HERE = {
    "segments": "is changed with POST /v1/experiments/<id>/segments and "
    "PATCH /v1/experiments/<id>/segments/<key>",
    "policy": "is changed with PATCH /v1/experiments/<id>/policy",
    "sticky": "is fixed at creation: switched midway, one experiment's impressions would be "
    "served two ways, and users assigned before would get their old variant back",
}


def _patch_schema(*never_null: str) -> Callable[[dict[str, Any]], None]:
    """A PATCH body's published schema, as the server reads it: at least one field; a field left
    out keeps its value, so none has a default (a client generated from the schema that filled in
    the published null cleared the brand voice, the price and the address); and `never_null`
    cannot be cleared, so their null, which the schema offered, is not offered."""

    def publish(schema: dict[str, Any]) -> None:
        describe_integers(schema)
        schema["minProperties"] = 1
        for name, field in schema["properties"].items():
            field.pop("default", None)
            if name in never_null:
                (kept,) = [option for option in field.pop("anyOf") if option != {"type": "null"}]
                field.update(kept)

    return publish


class ProductPatch(Request):
    """The product fields to change; a name and a description cannot be cleared, a price and an
    address can (null)."""

    model_config = ConfigDict(json_schema_extra=_patch_schema("name", "description"))

    name: Name | None = None
    description: LongText | None = None
    price: float | None = Field(default=None, ge=0, le=1e9)
    url: WebAddress | None = None

    @model_validator(mode="after")
    def _some_change(self) -> ProductPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one product field to change")
        for name in ("name", "description"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise at_fault(name, "must not be null: a product keeps one")
        return self


class ExperimentPatch(Request):
    """The brief and settings to change; fields not given keep their values."""

    model_config = ConfigDict(json_schema_extra=_patch_schema("name", "product", "auto_approve"))

    name: Name | None = None
    product: ProductPatch | None = None
    brand_voice: Reason | None = Field(default=None, description="how the copy should sound")
    auto_approve: bool | None = Field(default=None, description="serve generated copy unreviewed")

    @model_validator(mode="before")
    @classmethod
    def _changed_elsewhere(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, where in _NOT_EDITED_HERE.items():
                if name in data:
                    raise at_fault(name, where)
        return data

    @model_validator(mode="after")
    def _some_change(self) -> ExperimentPatch:
        if not self.model_fields_set:
            raise at_fault(
                "body",
                "give at least one field to change: name, product, brand_voice or auto_approve",
            )
        for name in ("name", "product", "auto_approve"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise at_fault(name, "must not be null")
        return self


class SegmentPatch(Request):
    description: Persona


class SegmentPath(Request):
    model_config = ConfigDict(extra="forbid")
    experiment_id: DbId
    # Any text: one that is not a segment key names no segment, a 404 (see find_segment).
    segment_key: str


class ExperimentPath(Request):
    model_config = ConfigDict(extra="forbid")  # path values arrive as ints from the URL converter
    experiment_id: DbId


class ProductOut(BaseModel):
    name: str
    description: str
    price: float | None
    url: str | None


class VariantOut(BaseModel):
    id: int
    segment: str
    text: str
    origin: Origin
    status: VariantStatus
    status_reason: str | None
    impressions: int
    conversions: int
    audit: dict[str, Any] | None = Field(
        default=None,
        description="generated copy: model, prompt, seed, lint results, job; left out of the list "
        "GET /v1/experiments, whose pages it made several times larger",
    )
    created_at: datetime
    updated_at: datetime


class SegmentOut(BaseModel):
    key: str
    description: str
    variants: list[VariantOut]


class ExperimentOut(BaseModel):
    id: int
    name: str
    product: ProductOut
    sticky: bool
    brand_voice: str | None
    auto_approve: bool
    policy: LifecyclePolicy
    policy_error: str | None = Field(
        default=None,
        description="why the stored policy does not validate (null when it does): the lifecycle "
        "leaves the experiment alone until PATCH /v1/experiments/<id>/policy makes it valid, "
        "and `policy` shows the defaults",
    )
    created_at: datetime
    segments: list[SegmentOut]


# Experiments of 20 segments of 8 variants each are 53 KB apiece without the variants' `audit`, a
# page of 100 of them 5.3 MB; the whole list had been 57 MB and 602 queries for 300. Also the
# largest page a client may ask for: a larger one costs the worker more, a page only 3 queries.
EXPERIMENT_PAGE = 100


class ExperimentListQuery(BaseModel):
    # Not strict: query values arrive as text (digits only, as the audit trail's `before`).
    model_config = ConfigDict(extra="forbid", json_schema_extra=describe_integers)
    # 0 is allowed as a cursor (no id is smaller than 1): a client that starts its loop at 0,
    # as cursors commonly do, gets the first page rather than a 400.
    after: Annotated[int, Field(ge=0, le=MAX_DB_ID), BeforeValidator(_digits_only)] | None = Field(
        default=None,
        description="only experiments with a larger id (0: from the first); "
        "pass next_after for the next page",
    )
    limit: Annotated[int, Field(ge=1, le=EXPERIMENT_PAGE), BeforeValidator(_digits_only)] = Field(
        default=EXPERIMENT_PAGE, description=f"experiments per page, 1 to {EXPERIMENT_PAGE}"
    )


class ExperimentList(BaseModel):
    experiments: list[ExperimentOut] = Field(
        description="oldest first (by id), at most `limit`; each variant without its `audit`, "
        "which GET /v1/experiments/<id> has"
    )
    next_after: int | None = Field(
        description="the `after` that fetches the next page; null on the last page"
    )


# --- variants ----------------------------------------------------------------------------------


class VariantCreate(Request):
    segment: SegmentKey
    text: CopyText
    origin: Literal["manual", "control"] = "manual"


class VariantPath(Request):
    model_config = ConfigDict(extra="forbid")
    variant_id: DbId


class VariantPatch(Request):
    """Either `{"status": ..., "reason"?: ...}` or `{"text": ...}`."""

    model_config = ConfigDict(
        json_schema_extra=_one_of(
            (("status",), ("text",)),
            # A reason goes with a status change; an edit keeps the reason the variant has.
            (("text",), ("status", "reason")),
        )
    )
    # Strict mode would demand an enum instance; JSON can only send its string value.
    status: Annotated[VariantStatus, Field(strict=False)] | None = None
    text: CopyText | None = None
    reason: Reason | None = None

    @model_validator(mode="after")
    def _status_or_text(self) -> VariantPatch:
        if self.status is None and self.text is None:
            raise at_fault("status", "required (or text, to edit pending copy)")
        if self.status is not None and self.text is not None:
            raise at_fault("text", "give either status or text, not both")
        # It was dropped without a word: an edit keeps the status and the reason it has.
        if self.text is not None and self.reason is not None:
            raise at_fault("reason", "goes with a status change, not a text edit")
        return self


# --- generation ------------------------------------------------------------------------------


class GenerateIn(Request):
    segment: SegmentKey | None = Field(default=None, description="default: every segment")
    n: int = Field(default=4, ge=1, le=20, description="accepted lines wanted per segment")


class JobPath(Request):
    model_config = ConfigDict(extra="forbid")
    job_id: DbId


# The header of a 201 (what was created) and of generate's 202 (its job), as documented.
LOCATION_HEADER = {
    "Location": {
        "description": "where what was created (or the job) is read",
        "required": True,
        "schema": {"type": "string"},
    }
}


class JobAccepted(BaseModel):
    # Only ever generate's 202, so its Location is documented with the model: a response given
    # as a dict, as common.located gives one, leaves its model out of the components.
    model_config = ConfigDict(
        openapi_extra={"headers": LOCATION_HEADER}  # type: ignore[typeddict-unknown-key]
    )

    job_id: int
    status: JobStatus


class JobWriting(BaseModel):
    segment: str
    accepted: int = Field(description="lines that passed the checks so far, none stored yet")


class JobOut(BaseModel):
    id: int
    experiment_id: int
    segment: str | None
    n: int
    status: JobStatus
    progress: float = Field(description="0 to 1")
    message: str
    result: dict[str, Any] | None = Field(
        description="variant_ids per segment, counts, and the reasons lines were rejected"
    )
    writing: JobWriting | None = Field(
        description="while the job runs, the segment it is writing now and its lines accepted so"
        " far: they are stored, and listed in result, when the segment ends; null otherwise"
    )
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


# --- serving -----------------------------------------------------------------------------------


class DecideIn(Request):
    experiment: DbId
    segment: (
        Annotated[
            str,
            Field(max_length=100, json_schema_extra={"pattern": NO_CONTROL_PATTERN}),
            _NoControl,
        ]
        | None
    ) = None
    user_id: (
        Annotated[
            str,
            Field(min_length=1, max_length=256, json_schema_extra={"pattern": NO_CONTROL_PATTERN}),
            _NoControl,
        ]
        | None
    ) = None


class DecideOut(BaseModel):
    impression_id: str
    variant_id: int
    text: str
    segment: str
    propensity: float = Field(
        description="the chance the policy that chose this variant had of choosing it: for a"
        " sticky repeat, the chance of the draw that first assigned the user, not of this answer"
    )
    # The values of service.decisions' POLICY_THOMPSON and POLICY_STICKY, as the impression stores.
    policy: Literal["thompson-v1", "sticky-v1"] = Field(
        description="thompson-v1 for a fresh Thompson draw; sticky-v1 for a sticky user's repeat"
    )


# Checked as strictly as a Request, but into a dict, not a model: a batch of 1,000 validated into
# models took 3.8 ms, into dicts 1.3 ms (2026-12-02; a quarter of a batch's time on SQLite).
@with_config(Request.model_config)
class EventIn(TypedDict):
    """One conversion of an impression the service handed out."""

    impression_id: ImpressionId
    type: Literal["conversion"]
    value: NotRequired[Annotated[float, Field(ge=0, le=1e12)] | None]
    event_id: NotRequired[ClientKey | None]


class EventsIn(Request):
    """Either one event (its fields at the top level) or `{"events": [...]}`."""

    model_config = ConfigDict(
        json_schema_extra=_one_of(
            (("impression_id", "type"), ("events",)),
            (("events",), ("impression_id", "type", "value", "event_id")),
        )
    )
    impression_id: ImpressionId | None = None
    type: Literal["conversion"] | None = None
    value: float | None = Field(default=None, ge=0, le=1e12)
    event_id: ClientKey | None = None
    events: list[EventIn] | None = Field(default=None, min_length=1, max_length=MAX_BATCH_EVENTS)

    @model_validator(mode="after")
    def _one_form(self) -> EventsIn:
        # Null is not given, in either form, as the published schema says.
        fields = ("impression_id", "type", "value", "event_id")
        single = [field for field in fields if getattr(self, field) is not None]
        if self.events is not None and single:
            raise at_fault("events", "give either one event or an events list, not both")
        if self.events is None:
            # Sent as null counts as not given: as_list() could not build an event from it.
            for field in ("impression_id", "type"):
                if getattr(self, field) is None:
                    raise at_fault(field, "required (or an events list)")
        return self

    def as_list(self) -> list[EventIn]:
        if self.events is not None:
            return self.events
        assert self.impression_id is not None and self.type is not None  # _one_form saw to it
        return [
            EventIn(
                impression_id=self.impression_id,
                type=self.type,
                value=self.value,
                event_id=self.event_id,
            )
        ]


class RejectedEvent(BaseModel):
    index: int
    field: str
    reason: str


class EventsOut(BaseModel):
    accepted: int
    duplicate: int
    rejected: int
    rejections: list[RejectedEvent]


# --- reports -----------------------------------------------------------------------------------


class VariantStats(BaseModel):
    variant_id: int
    text: str
    origin: Origin
    status: VariantStatus
    impressions: int
    conversions: int
    rate: float | None = Field(description="conversions / impressions; null before any impression")
    posterior_mean: float
    interval: tuple[float, float] = Field(description="95% equal-tailed credible interval")
    prob_best: float | None = Field(description="among the segment's active variants; else null")
    expected_loss: float | None = Field(description="conversion rate given up by serving this one")


class Leader(BaseModel):
    variant_id: int
    text: str
    prob_best: float
    impressions: int
    proven: bool = Field(
        description="has the policy's min_impressions, the evidence the lifecycle asks of a "
        "winner: below it, a lead can be mostly the prior's (see the segment's verdict)"
    )


class ThinLead(BaseModel):
    """The leader, ahead by probability best on fewer than the policy's min_impressions: so
    little evidence that its lead can be mostly its prior's, and no winner is declared on it."""

    variant_id: int
    impressions: int
    needed: int = Field(description="the policy's min_impressions")
    alone: bool = Field(
        description="the segment's only live copy: its probability best of 1 is a race it runs "
        "alone, ahead of no other copy"
    )


class Verdict(BaseModel):
    """What a segment's results say so far, as the dashboard's headline says it."""

    kind: Literal["winner", "leader", "proven", "early"] = Field(
        description="winner: the lifecycle declared one (the dashboard's Winner); leader: the "
        "leader has min_impressions (Leading, or Only live copy where alone); proven: it has "
        "not, and variant_id is the best of the copy that has (Best proven); early: no live "
        "copy has them yet, and variant_id is the leader (Too early to tell)"
    )
    variant_id: int = Field(description="the copy the verdict names")
    thin_lead: ThinLead | None = Field(
        description="the leader, where it is ahead on too little evidence (kinds proven and "
        "early); else null"
    )
    alone: bool = Field(
        description="variant_id is the segment's only live copy: the lifecycle declares a winner "
        "only among two or more, so none is declared until more copy is live (kind winner: it was "
        "declared while others were, and they have left since)"
    )
    none_shown: bool = Field(
        description="kind early, and no live copy has been shown yet: variant_id tops "
        "probability best on its prior alone (lines at one prior tie), not on evidence: no lead"
    )


class Winner(BaseModel):
    variant_id: int
    declared_at: datetime


class SegmentReport(BaseModel):
    key: str
    impressions: int
    conversions: int
    leader: Leader | None = Field(
        description="the live copy with the highest probability best, however little evidence "
        "it has (see proven); null with no live copy"
    )
    winner: Winner | None = Field(description="declared by the lifecycle at policy.declare_at")
    verdict: Verdict | None = Field(description="null with no live copy")
    variants: list[VariantStats]


class Report(BaseModel):
    experiment_id: int
    name: str
    policy: LifecyclePolicy
    policy_error: str | None = Field(
        default=None,
        description="why the stored policy does not validate (null when it does): the lifecycle "
        "leaves the experiment alone until PATCH /v1/experiments/<id>/policy makes it valid, "
        "and `policy` shows the defaults",
    )
    generated_at: datetime
    segments: list[SegmentReport]


AuditAction = Literal[
    "pause", "retire", "declare_winner", "regenerate", "prior", "discount", "edit", "hold"
]


class AuditQuery(BaseModel):
    # Not strict: query values arrive as text (digits only for an id, so not 1.0 either).
    model_config = ConfigDict(extra="forbid", json_schema_extra=describe_integers)
    before: QueryId | None = Field(
        default=None, description="only events older than this id: pass next_before for a page"
    )
    action: AuditAction | None = Field(default=None, description="only events of this action")


class AuditEvent(BaseModel):
    id: int
    created_at: datetime
    segment: str | None
    variant_id: int | None
    action: str = Field(
        description="pause, retire, declare_winner, regenerate, prior, discount, edit (a person's "
        "change to the brief, a segment or the lifecycle policy), hold"
    )
    reason: str
    numbers: dict[str, Any] | None


class AuditTrail(BaseModel):
    events: list[AuditEvent] = Field(description="newest first, at most 500")
    next_before: int | None = Field(
        description="the `before` that fetches the next, older page; null on the last page"
    )


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class Alive(BaseModel):
    status: Literal["ok"]


class ErrorOut(BaseModel):
    error: str
    message: str
    field: str | None = None
