"""An experiment's lifecycle policy: when copy retires, when a winner is declared, when the model
writes more. Stored with the experiment as JSON; missing fields take these defaults."""

from __future__ import annotations

import json
from typing import Any, ClassVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from service.errors import at_fault, field_of, in_words
from service.integers import describe_integers


class LifecyclePolicy(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="forbid", allow_inf_nan=False, json_schema_extra=describe_integers
    )

    min_impressions: int = Field(
        default=200,
        ge=1,
        le=10**9,
        description="evidence a variant needs before any rule judges it",
    )
    retire_below: float = Field(
        default=0.02, ge=0, le=1, description="retire when probability best falls below this"
    )
    retire_loss_above: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="also retire when expected loss (conversion rate given up) exceeds this",
    )
    starved_after: int | None = Field(
        default=10,
        ge=2,
        le=10**6,
        description="also retire copy under min_impressions whose probability best is below "
        "retire_below once its segment has served this many times min_impressions since it went "
        "live, and stop waiting on such copy to declare a winner; null: wait for min_impressions "
        "however long it takes",
    )
    target_active: int = Field(
        default=4,
        ge=1,
        le=50,
        description="below this many live variants, the model writes more; at most max_active",
    )
    max_active: int = Field(
        default=8,
        ge=1,
        le=50,
        description="the lifecycle orders no copy beyond this many live, pending and on-order "
        "variants; hand generation and approvals are not capped; at least target_active",
    )
    declare_at: float = Field(
        default=0.95, gt=0.5, le=1, description="declare a winner at this probability best"
    )
    informed_priors: bool = Field(
        default=True, description="start new variants at the segment's typical rate"
    )
    prior_max_trials: float = Field(
        default=20.0,
        gt=0,
        le=10_000,
        description="an informed prior is worth at most this many trials",
    )
    guardrail_at: float = Field(
        default=0.99,
        gt=0.5,
        le=1,
        description="pause a variant this likely to be worse than control",
    )
    regenerate: bool = Field(default=True, description="queue generation below target_active")
    discount_per_hour: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="weight each hour leaves on older evidence (e.g. 0.999); null keeps it all",
    )

    # What a null is told to do instead, where a field cannot be null.
    LEAVE_OUT: ClassVar[str] = "leave it out for its default"

    @model_validator(mode="before")
    @classmethod
    def _null_only_where_it_means_something(cls, data: Any) -> Any:
        # Strict typing answered null with "Input should be a valid integer", as if a number
        # had been mistyped; the brief's PATCH says a field cannot be null.
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if value is None and field is not None and not _nullable(field.annotation):
                    raise at_fault(name, f"must not be null: {cls.LEAVE_OUT}")
        return data

    @model_validator(mode="after")
    def _bounds(self, info: ValidationInfo) -> LifecyclePolicy:
        if self.max_active < self.target_active:
            # A change to target_active alone is at fault there: the client sent no max_active.
            # A PATCH names what it sent (the stored fields are merged in); a policy given whole,
            # at creation, sent the fields it has.
            sent = (info.context or {}).get("sent", self.model_fields_set)
            if "target_active" in sent and "max_active" not in sent:
                raise at_fault("target_active", f"must be <= max_active ({self.max_active})")
            raise at_fault("max_active", "must be >= target_active")
        return self


def _nullable(annotation: Any) -> bool:
    return type(None) in get_args(annotation)


def _as_changes(schema: dict[str, Any]) -> None:
    describe_integers(schema)
    # At least one field, as the server reads it (and as the brief's PATCH publishes).
    schema["minProperties"] = 1
    for field in schema.get("properties", {}).values():
        field.pop("default", None)


class PolicyChanges(LifecyclePolicy):
    """A PATCH body: each field is checked alone here; the cross-field rules are checked once the
    changes are merged with the stored policy (service.experiments.update_policy)."""

    # A field left out keeps its stored value, so the schema publishes no defaults: a client
    # generated from it that filled them in would reset the rest of the policy.
    model_config = ConfigDict(json_schema_extra=_as_changes)
    LEAVE_OUT: ClassVar[str] = "leave it out to keep its value"

    @model_validator(mode="after")
    def _bounds(self, info: ValidationInfo) -> PolicyChanges:
        return self

    @model_validator(mode="after")
    def _some_change(self) -> PolicyChanges:
        # `{}` was a 200 that changed nothing the client asked for (it only dropped stored fields
        # this version does not know), where the brief's PATCH refuses an empty change.
        if not self.model_fields_set:
            raise at_fault(
                "body",
                f"give at least one rule to change: {', '.join(LifecyclePolicy.model_fields)}",
            )
        return self


def policy_of(stored: dict[str, Any] | None) -> LifecyclePolicy:
    """The stored policy; ValidationError when it no longer validates (written by hand, or by
    another version of copybandit): the lifecycle then leaves the experiment alone."""
    return LifecyclePolicy.model_validate(stored or {})


def policy_shown(stored: dict[str, Any] | None) -> tuple[LifecyclePolicy, str | None]:
    """The policy to show, and why the stored one does not validate (None when it does): then
    the defaults, and the stored fields are quoted in the reason, for fixing."""
    try:
        return policy_of(stored), None
    except ValidationError as exc:
        why = "; ".join(
            in_words(e) if field_of(e) is None else f"{field_of(e)}: {in_words(e)}"
            for e in exc.errors()
        )
    return LifecyclePolicy(), f"stored policy {json.dumps(stored)} does not validate: {why}"
