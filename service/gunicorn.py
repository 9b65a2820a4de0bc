"""Run the app under gunicorn from our own CLI, so options come from copybandit's settings."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gunicorn import glogging, util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers import sync

from service.errors import FIELDS_AT_FAULT, HTTP_CODES
from service.logs import HidesApiKeys, JsonLines

# The signals a worker installs handlers for: how the master (and a terminal's Ctrl-C, sent to
# the whole process group) tells a worker to stop.
_WORKER_SIGNALS = {
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGABRT,
    signal.SIGUSR1,
    signal.SIGWINCH,
}


class _Arbiter(Arbiter):
    """gunicorn's master, but a signal sent to a worker before it installs its handlers waits
    for them instead of being lost.

    A new worker runs the master's handlers until its own are in place, and the master's only
    queue a signal in the worker's copy of the master's state. A SIGTERM that came then (the
    server stopped just as its last worker forked) was dropped, and the master waited out its
    whole graceful timeout, 30 s, for a worker that never heard it.
    """

    def spawn_worker(self) -> int:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
        try:
            # The child leaves this call only by exiting; SyncWorker.init_signals unblocks them.
            return super().spawn_worker()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


class _Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def run(self) -> None:
        try:
            _Arbiter(self).run()
        except RuntimeError as error:  # as BaseApplication.run reports a bad configuration
            print(f"\nError: {error}\n", file=sys.stderr)
            sys.exit(1)

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


class _ClosesOnceAnswered(socket.socket):
    """A client socket that, once its answer is sent, waits for the client only while the
    client is still sending.

    gunicorn 26+ closes each connection gracefully (RFC 9112 section 9.6): it shuts its side,
    then reads until the client closes too, for up to 2 s. A sync worker serves no one
    meanwhile, so a client that keeps its socket open after the answer held a worker for 2 s,
    and every client held it for a round trip to itself (measured: 37% of a worker's time under
    decide load, 55% under /livez). The wait exists so that request bytes left unread do not make
    the kernel answer the close with a reset that can discard the response: so if any such bytes
    are there, the wait goes on as gunicorn does it; if none are, the socket closes at once.
    """

    _answered = False
    _client_still_sending = False

    def shutdown(self, how: int) -> None:
        super().shutdown(how)
        self._answered = True

    def settimeout(self, value: float | None) -> None:
        waits = not self._answered or self._client_still_sending
        super().settimeout(value if waits else 0.0)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if data and self._answered:
            self._client_still_sending = True
        return data


def _write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """gunicorn's util.write_error, in the API's error shape instead of an HTML page."""
    error: dict[str, Any] = {"error": HTTP_CODES.get(status, "error"), "message": message or reason}
    if status in FIELDS_AT_FAULT:
        error["field"] = FIELDS_AT_FAULT[status]
    body = json.dumps(error).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


@contextmanager
def _errors_written_as_json() -> Iterator[None]:
    # handle_error builds the status and words for every request gunicorn could not parse (414,
    # 431, 400, ...) and has util.write_error send them; only that last step changes. A sync
    # worker handles one connection at a time, so nothing else writes while it is swapped.
    html_writer = util.write_error
    util.write_error = _write_json_error
    try:
        yield
    finally:
        util.write_error = html_writer


class SyncWorker(sync.SyncWorker):
    """gunicorn's sync worker, but a connection is closed without waiting on an idle client,
    and a request gunicorn itself refuses is answered in JSON, as the app answers every error."""

    def init_signals(self) -> None:
        super().init_signals()
        # Held since the fork (_Arbiter.spawn_worker): one that came meanwhile is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        adopted = _ClosesOnceAnswered(client.family, client.type, client.proto, client.detach())
        super().handle(listener, adopted, addr)

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        with _errors_written_as_json():
            super().handle_error(req, client, addr, exc)


_HIDES_API_KEYS = HidesApiKeys()


class Logger(glogging.Logger):
    """gunicorn's own lines (starting, workers booting and exiting, access lines) at the
    service's log level: gunicorn logs each access at INFO whatever its level says."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.access_log.setLevel(self.loglevel)
        # One filter for every setup: gunicorn sets up its logger again on each reload (HUP).
        for log in (self.access_log, self.error_log):
            log.addFilter(_HIDES_API_KEYS)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        # gunicorn logs a Basic Authorization header's user name (%(u)s). The API takes keys only
        # as Bearer, so that name is a key sent the wrong way (curl -u "$KEY:"): refused, but
        # written whole into the access log.
        atoms["u"] = "-"
        return atoms


class JsonLinesLogger(Logger):
    """As Logger, and in the service's JSON lines, so a log pipeline can parse every line."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in [*self.error_log.handlers, *self.access_log.handlers]:
            handler.setFormatter(JsonLines())


def worker_exit(_server: Any, _worker: Any) -> None:
    """A worker stopping while a generation job runs ends here, once that job is written off.

    Finalizing the interpreter stops the generation thread where it next wants the GIL: inside
    torch's C++, which then aborted the worker (SIGABRT, 'terminate called without an active
    exception'). Ending the process at once, with the code it was exiting with, stops the thread
    with it; without a job running, the worker exits as usual.
    """
    from service import generation_jobs

    if not generation_jobs.generating():
        return
    generation_jobs.interrupt_held_jobs()  # what the atexit handler would have done
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_code_unwinding())


def _exit_code_unwinding() -> int:
    """The code of the sys.exit unwinding now: gunicorn calls worker_exit in a finally block."""
    exiting = sys.exc_info()[1]
    if not isinstance(exiting, SystemExit):
        return 1
    if exiting.code is None or isinstance(exiting.code, int):
        return exiting.code or 0
    return 1  # sys.exit("message") prints it and exits 1


def run(options: dict[str, Any]) -> None:
    from service import preload

    # Done once here in the master, whose workers fork with it done, not once in each worker's
    # create_app.
    preload()
    _Server(options).run()
