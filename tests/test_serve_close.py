"""How a sync worker closes a connection once it has answered (service.gunicorn.SyncWorker)."""

from __future__ import annotations

import socket
import threading
import time

from gunicorn import util

from service.gunicorn import _ClosesOnceAnswered


def _adopted_pair() -> tuple[socket.socket, socket.socket]:
    server_side, client = socket.socketpair()
    adopted = _ClosesOnceAnswered(
        server_side.family, server_side.type, server_side.proto, server_side.detach()
    )
    return adopted, client


def test_an_idle_client_is_not_waited_for() -> None:
    server_side, client = _adopted_pair()
    with client:
        started = time.monotonic()
        util.close_graceful(server_side)  # gunicorn's close: read until the client closes, 2 s
        assert time.monotonic() - started < 1.0
        assert client.recv(10) == b""  # the server's side is closed; the client is told so


def test_a_client_still_sending_is_read_to_its_end_before_the_close() -> None:
    # Bytes left unread at the close make the kernel reset the connection, which can discard
    # the answer at the client: while the client sends, the close waits as gunicorn's does.
    server_side, client = _adopted_pair()
    client.sendall(b"rest of a body the app never read")

    def finish_sending() -> None:
        time.sleep(0.3)
        client.sendall(b"and its last part")
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=finish_sending)
    started = time.monotonic()  # before the sender's sleep begins, so the wait is at least 0.3 s
    sender.start()
    util.close_graceful(server_side)
    waited = time.monotonic() - started
    sender.join()
    with client:
        assert client.recv(10) == b""  # a clean close, not a reset
    assert 0.3 <= waited < 2.0
