"""Run the app under gunicorn from our own CLI, so options come from copybandit's settings."""

from __future__ import annotations

import gc
from typing import Any

from gunicorn.app.base import BaseApplication


class _Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        # Each worker builds its own app after the fork: no engine or RNG crosses processes.
        from service import create_app

        app = create_app()
        # What start-up built lives as long as the worker: moved out of the collector's sight,
        # it is not traversed again on every collection a request's garbage triggers.
        gc.freeze()
        return app


def run(options: dict[str, Any]) -> None:
    _Server(options).run()
