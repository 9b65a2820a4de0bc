"""Making a race happen in a test: a second request looks for a twin of its copy while the first,
having looked, has not yet stored its own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from service import experiments


@contextmanager
def second_looks_while_first_has_looked(
    monkeypatch: pytest.MonkeyPatch, second: Callable[[], Any]
) -> Iterator[list[Any]]:
    """Run the request made inside the block; once it has looked for a twin, `second` starts in
    another thread, and the first goes on once the second has looked too, or after 2 s. Yields the
    list `second`'s answer is appended to, complete when the block ends."""
    answers: list[Any] = []
    second_looked = threading.Event()
    thread = threading.Thread(target=lambda: answers.append(second()))
    looked = experiments._same_copy

    def look(*args: Any, **kwargs: Any) -> Any:
        found = looked(*args, **kwargs)
        if threading.current_thread() is thread:
            second_looked.set()
        elif not thread.is_alive() and not answers:
            thread.start()
            # Without the segment's lock the second looks, finds nothing and stores its copy
            # first; with it, it waits for the first request to end, and the wait here runs out.
            second_looked.wait(2)
        return found

    monkeypatch.setattr(experiments, "_same_copy", look)
    try:
        yield answers
    finally:
        thread.join(30)
