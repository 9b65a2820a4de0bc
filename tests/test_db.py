"""The engine each app builds (service.db)."""

from __future__ import annotations

from service.config import load_settings
from service.db import make_engine


def test_the_pool_hands_out_the_connection_returned_last(database_url: str) -> None:
    # A SQLite connection re-reads every page it needs once another connection has committed, so
    # decisions rotating over two pooled connections each read their B-tree pages again.
    engine = make_engine(load_settings({"database_url": database_url}, environ={}))
    try:
        first, second = engine.raw_connection(), engine.raw_connection()
        returned_last = second.driver_connection
        first.close()
        second.close()
        again = engine.raw_connection()
        assert again.driver_connection is returned_last
        again.close()
    finally:
        engine.dispose()
