from __future__ import annotations

from typing import Any


def test_decide_then_convert_then_report(api: Any, experiment: dict[str, Any]) -> None:
    decision = api.decide(experiment["id"], segment="tea-lovers")
    response = api.post(
        "/v1/events",
        key="serve",
        json={"impression_id": decision["impression_id"], "type": "conversion"},
    )
    assert response.get_json()["accepted"] == 1
    report = api.get(f"/v1/experiments/{experiment['id']}/report").get_json()
    tea = report["segments"][0]
    assert tea["key"] == "tea-lovers"
    assert (tea["impressions"], tea["conversions"]) == (1, 1)
