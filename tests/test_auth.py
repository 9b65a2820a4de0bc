"""API keys: who may call what, and how keys are stored."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlmodel import Session

from service.auth import KeyCache, authenticate, create_key, revoke_key
from service.models import ApiKey, Scope


def _key_id(key: str) -> str:
    return key.removeprefix("cb_").partition("_")[0]


def _secret(key: str) -> str:
    return key.removeprefix("cb_").partition("_")[2]


def _call(api: Any, method: str, path: str, body: Any, **headers: str) -> Any:
    return api.client.open(path, method=method, json=body, headers=headers)


def _call_as(api: Any, scope: str, method: str, path: str, body: Any) -> Any:
    return _call(api, method, path, body, Authorization=f"Bearer {api.keys[scope]}")


def _assert_401(response: Any) -> None:
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def _admin_requests(experiment: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(method, path, valid body) for every admin endpoint."""
    exp_id = experiment["id"]
    variant_id = experiment["segments"][0]["variants"][1]["id"]
    new_experiment = {
        "name": "Another",
        "product": {"name": "Kettle", "description": "Boils water."},
        "segments": [{"key": "all", "description": "Everyone."}],
    }
    return [
        ("POST", "/v1/experiments", new_experiment),
        ("GET", "/v1/experiments", None),
        ("GET", f"/v1/experiments/{exp_id}", None),
        ("POST", f"/v1/experiments/{exp_id}/variants", {"segment": "tea-lovers", "text": "Hi."}),
        ("PATCH", f"/v1/variants/{variant_id}", {"text": "Rewritten."}),
        ("GET", f"/v1/experiments/{exp_id}/report", None),
    ]


def _serve_requests(api: Any, experiment: dict[str, Any]) -> list[tuple[str, str, Any]]:
    impression = api.decide(experiment["id"])["impression_id"]
    return [
        ("POST", "/v1/decide", {"experiment": experiment["id"]}),
        ("POST", "/v1/events", {"impression_id": impression, "type": "conversion"}),
    ]


def _every_request(api: Any, experiment: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return _admin_requests(experiment) + _serve_requests(api, experiment)


# --- the Authorization header -------------------------------------------------------------------


def test_no_authorization_header_is_401_everywhere(api: Any, experiment: dict[str, Any]) -> None:
    for method, path, body in _every_request(api, experiment):
        _assert_401(_call(api, method, path, body))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Token {admin}", id="wrong-scheme"),
        pytest.param("{admin}", id="no-scheme"),
        pytest.param("Bearer ", id="empty-bearer"),
        pytest.param("Bearer    ", id="blank-bearer"),
        pytest.param("Bearer", id="bare-bearer"),
        pytest.param("Bearer cb_0123456789abcdef_notarealsecret", id="unknown-key"),
        pytest.param("Bearer {admin}x", id="wrong-secret"),
        pytest.param("Bearer cb_{admin_id}_{serve_secret}", id="secret-of-another-key"),
        pytest.param("Bearer cb_{admin_id}", id="id-without-secret"),
        pytest.param("Bearer cb_{admin_id}_", id="empty-secret"),
        pytest.param("Bearer {admin_secret}", id="secret-without-id"),
        # PostgreSQL refuses NUL in text: looking such an id up was a 500 (gunicorn refuses the
        # header itself; other servers may not).
        pytest.param("Bearer cb_0123\x00456789abcdef_x", id="nul-in-id"),
        pytest.param("Bearer cb_{admin_id}0_{admin_secret}", id="id-too-long"),
        pytest.param("Bearer cb_\u00e9\u00e9_{admin_secret}", id="non-ascii-id"),
    ],
)
def test_malformed_or_wrong_key_is_401(api: Any, experiment: dict[str, Any], header: str) -> None:
    admin, serve = api.keys["admin"], api.keys["serve"]
    value = header.format(
        admin=admin,
        admin_id=_key_id(admin),
        admin_secret=_secret(admin),
        serve_secret=_secret(serve),
    )
    for method, path, body in _every_request(api, experiment):
        _assert_401(_call(api, method, path, body, Authorization=value))


def test_bearer_scheme_is_case_insensitive(api: Any) -> None:
    response = _call(
        api, "GET", "/v1/experiments", None, Authorization=f"bearer {api.keys['admin']}"
    )

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/v1/experiments", {}, id="invalid-body"),
        pytest.param("PATCH", "/v1/variants/99999999999", {"text": "Hi."}, id="invalid-path"),
    ],
)
def test_keys_are_checked_before_the_request_is_validated(
    api: Any, method: str, path: str, body: Any
) -> None:
    # Who may call comes first: a caller without the right key learns nothing about the schema.
    _assert_401(_call(api, method, path, body))
    assert _call_as(api, "serve", method, path, body).status_code == 403


# --- scopes ---------------------------------------------------------------------------------------


def test_serve_key_is_403_on_every_admin_endpoint(api: Any, experiment: dict[str, Any]) -> None:
    before = api.get(f"/v1/experiments/{experiment['id']}").get_json()

    for method, path, body in _admin_requests(experiment):
        response = _call_as(api, "serve", method, path, body)
        assert response.status_code == 403, (method, path, response.get_json())
        assert response.get_json()["error"] == "forbidden"

    assert api.get(f"/v1/experiments/{experiment['id']}").get_json() == before
    assert [e["id"] for e in api.get("/v1/experiments").get_json()["experiments"]] == [before["id"]]


def test_serve_key_may_serve_and_record_events(api: Any, experiment: dict[str, Any]) -> None:
    for method, path, body in _serve_requests(api, experiment):
        response = _call_as(api, "serve", method, path, body)
        assert response.status_code == 200, (path, response.get_json())


def test_admin_key_may_serve_and_record_events(api: Any, experiment: dict[str, Any]) -> None:
    for method, path, body in _serve_requests(api, experiment):
        response = _call_as(api, "admin", method, path, body)
        assert response.status_code == 200, (path, response.get_json())


def test_admin_key_may_use_admin_endpoints(api: Any, experiment: dict[str, Any]) -> None:
    for method, path, body in _admin_requests(experiment):
        response = _call_as(api, "admin", method, path, body)
        # The PATCH edits active copy, which is refused on its merits (409), not for the key.
        expected = 409 if method == "PATCH" else (201 if method == "POST" else 200)
        assert response.status_code == expected, (method, path, response.get_json())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("scope", ["admin", "serve"])
def test_revoked_key_is_401_once_the_workers_key_cache_expires(
    app: Any, api: Any, session: Session, experiment: dict[str, Any], scope: str
) -> None:
    clock = Clock()
    app.extensions["copybandit.keys"] = KeyCache(5.0, clock=clock)
    decide = ("POST", "/v1/decide", {"experiment": experiment["id"]})
    assert _call_as(api, scope, *decide).status_code == 200  # it works until it is revoked

    revoke_key(session=session, key_id=_key_id(api.keys[scope]))
    clock.now += 4.9
    assert _call_as(api, scope, *decide).status_code == 200  # this worker checked it 4.9 s ago
    clock.now += 0.2

    _assert_401(_call_as(api, scope, *decide))
    other = "serve" if scope == "admin" else "admin"
    assert _call_as(api, other, *decide).status_code == 200


def test_key_cache_never_remembers_a_failure(app: Any, api: Any, session: Session) -> None:
    clock = Clock()
    cache = KeyCache(5.0, clock=clock)
    _, fresh = create_key(session=session, scope=Scope.SERVE)
    wrong = fresh[:-1] + ("A" if fresh[-1] != "A" else "B")
    with app.test_request_context():
        assert cache.authenticate(wrong) is None
        assert cache.authenticate(fresh) == (_key_id(fresh), "serve")
        assert cache.authenticate(wrong) is None  # still refused: no negative caching


def test_key_cache_of_zero_seconds_reads_the_database_every_time(
    app: Any, api: Any, session: Session
) -> None:
    cache = KeyCache(0.0)
    _, key = create_key(session=session, scope=Scope.ADMIN)
    with app.test_request_context():
        assert cache.authenticate(key) == (_key_id(key), "admin")
        revoke_key(session=session, key_id=_key_id(key))
        assert cache.authenticate(key) is None


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json"])
def test_public_endpoints_need_no_key(client: Any, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200
    assert response.get_json()


# --- service.auth ---------------------------------------------------------------------------------


def test_stored_key_keeps_only_a_sha256_digest(session: Session) -> None:
    row, plaintext = create_key(session=session, scope=Scope.SERVE, label="storefront")
    secret = _secret(plaintext)

    stored = session.get(ApiKey, _key_id(plaintext))

    assert stored is not None
    assert stored.id == row.id == _key_id(plaintext)
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    columns = [str(getattr(stored, column.name)) for column in ApiKey.__table__.columns]
    assert not any(secret in value for value in columns)
    assert not any(plaintext in value for value in columns)


def test_authenticate_checks_both_halves(session: Session) -> None:
    row, plaintext = create_key(session=session, scope=Scope.ADMIN)
    _, other = create_key(session=session, scope=Scope.ADMIN)

    found = authenticate(session=session, presented=plaintext)
    assert found is not None and found.id == row.id
    assert authenticate(session=session, presented=f"cb_{row.id}_{_secret(other)}") is None
    assert authenticate(session=session, presented=f"cb_{row.id}_{_secret(plaintext)}x") is None
    assert authenticate(session=session, presented=plaintext.removeprefix("cb_")) is None


def test_authenticate_refuses_a_revoked_key(session: Session) -> None:
    row, plaintext = create_key(session=session, scope=Scope.SERVE)

    revoked = revoke_key(session=session, key_id=row.id)

    assert revoked.revoked_at is not None
    assert authenticate(session=session, presented=plaintext) is None
