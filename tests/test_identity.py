from __future__ import annotations

import re

from service.identity import hash_user_id, new_impression_id


def test_impression_ids_are_unique_hex_and_time_ordered() -> None:
    ids = [new_impression_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    # Strictly increasing within a process, even within one millisecond.
    assert ids == sorted(ids)
    assert len({i[:12] for i in ids}) < len(ids)  # many shared a millisecond


def test_user_hash_is_keyed_and_stable() -> None:
    first = hash_user_id("alice@example.com", key="k1")
    assert first == hash_user_id("alice@example.com", key="k1")
    assert first != hash_user_id("alice@example.com", key="k2")
    assert "alice" not in first and len(first) == 64
