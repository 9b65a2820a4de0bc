"""The demo experiment `make run` seeds into an empty database, so there is something to serve."""

from __future__ import annotations

from sqlmodel import Session, select

from service.experiments import add_variant, create_experiment
from service.models import Experiment
from service.schemas import ExperimentCreate, VariantCreate

DEMO = {
    "name": "Demo: Ridgeline trail shoes",
    "product": {
        "name": "Ridgeline trail-running shoes",
        "description": "Lightweight trail-running shoes with a grippy lugged sole, a rock plate "
        "and a breathable, quick-drying upper.",
        "price": 129.0,
        "url": "https://shop.example.com/ridgeline",
    },
    "brand_voice": "Warm, outdoorsy and plain-spoken; no hype.",
    "segments": [
        {
            "key": "weekend-hikers",
            "description": "Casual hikers who head out on weekends; value comfort and "
            "reliable grip "
            "over speed.",
        },
        {
            "key": "trail-racers",
            "description": "Competitive trail runners chasing personal bests; care about weight, "
            "traction and responsiveness.",
        },
        {
            "key": "value-seekers",
            "description": "Shoppers comparing prices who want one durable shoe that lasts several "
            "seasons.",
        },
    ],
}

VARIANTS = {
    "weekend-hikers": [
        ("control", "Ridgeline trail-running shoes: comfort and grip for every trail."),
        ("manual", "Sure-footed on wet rock, comfy all day: meet your new weekend trail shoe."),
        ("manual", "Wherever the weekend takes you, Ridgeline keeps your feet dry and steady."),
    ],
    "trail-racers": [
        ("control", "Ridgeline trail-running shoes: light, fast and grippy."),
        ("manual", "Shave seconds off every descent with Ridgeline's aggressive lugged sole."),
        (
            "manual",
            "Race-light trail shoes with a rock plate, so you can attack technical terrain.",
        ),
    ],
    "value-seekers": [
        ("control", "Ridgeline trail-running shoes, $129."),
        ("manual", "One pair of Ridgeline trail shoes, built to last season after season."),
        ("manual", "Durable trail shoes that go from city park to mountain path for $129."),
    ],
}


def seed_demo(*, session: Session) -> Experiment | None:
    """Create the demo experiment if the database has no experiments; return it, or None."""
    if session.exec(select(Experiment.id)).first() is not None:
        return None
    experiment = create_experiment(
        session=session, experiment_create=ExperimentCreate.model_validate(DEMO)
    )
    for segment, variants in VARIANTS.items():
        for origin, text in variants:
            add_variant(
                session=session,
                experiment_id=experiment.id,  # type: ignore[arg-type]
                variant_create=VariantCreate(segment=segment, text=text, origin=origin),  # type: ignore[arg-type]
            )
    return experiment
