"""HTTP front of a witness: C2SP tlog-witness ``POST /add-checkpoint`` on a loopback port.

Why the standard library's :class:`~http.server.ThreadingHTTPServer` and not aiohttp: the
protocol is one POST endpoint, every request does a few hundred microseconds of synchronous work
(two Ed25519 operations and one SQLite transaction, serialised anyway by the store's write lock),
and a witness sees a checkpoint every few seconds per log. A thread per connection is ample; an
event loop would add a dependency and nothing to measure. HTTP/1.1 keep-alive is on
(tlog-witness: witnesses "SHOULD support" it).

The server only moves bytes: :class:`~gateway.ledger.witness.Witness` does every check, and the
typed error it raises picks the status code tlog-witness names (:func:`http_status`). Defences
at the edge: the body must have a ``Content-Length`` no larger than the largest valid request
(refused with 413 before it is read), and an idle or slow connection is dropped after
``request_timeout`` seconds so it cannot pin a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from gateway.core.errors import (
    ConflictError,
    OversizeError,
    ProvenanceError,
    SignatureError,
    UnavailableError,
    UntrustedSignerError,
)
from gateway.ledger.witness import MAX_REQUEST_SIZE, Witness

__all__ = ["ADD_CHECKPOINT_PATH", "SIZE_CONTENT_TYPE", "WitnessServer", "http_status"]

#: The submission path (tlog-witness: ``<submission prefix>/add-checkpoint``, empty prefix).
ADD_CHECKPOINT_PATH = "/add-checkpoint"
#: tlog-witness: a 409 body is the known size and a newline, with this media type.
SIZE_CONTENT_TYPE = "text/x.tlog.size"

_log = logging.getLogger(__name__)


# Checked in order; the first match gives the status (tlog-witness, add-checkpoint).
_BY_REASON = {
    "unknown-log": HTTPStatus.NOT_FOUND,  # "If the checkpoint origin is unknown ... 404"
    "bad-consistency-proof": HTTPStatus.UNPROCESSABLE_ENTITY,  # "doesn't verify ... 422"
}
_BY_CLASS: tuple[tuple[type[ProvenanceError], HTTPStatus], ...] = (
    (UnavailableError, HTTPStatus.SERVICE_UNAVAILABLE),
    (ConflictError, HTTPStatus.CONFLICT),  # stale old size, or another root at one size
    (OversizeError, HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
    (SignatureError, HTTPStatus.FORBIDDEN),  # "none of the signatures verify ... 403"
    (UntrustedSignerError, HTTPStatus.FORBIDDEN),
)


def http_status(error: ProvenanceError) -> HTTPStatus:
    """Return the tlog-witness status code for a refusal raised by :class:`Witness`."""
    if error.reason in _BY_REASON:
        return _BY_REASON[error.reason]
    for cls, status in _BY_CLASS:
        if isinstance(error, cls):
            return status
    return HTTPStatus.BAD_REQUEST  # malformed request, old size above the checkpoint size


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's
    # delayed ACK (~40 ms on Linux) on every kept-alive request. Measured: 44 ms -> <1 ms.
    disable_nagle_algorithm = True
    server_version = "provgw-witness"
    sys_version = ""
    server: _Server

    def do_POST(self) -> None:
        if self.path != ADD_CHECKPOINT_PATH:
            # The body is left unread, so the connection cannot carry another request.
            self._reply(
                HTTPStatus.NOT_FOUND, b"Only POST /add-checkpoint is served here.\n", close=True
            )
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._reply(
                HTTPStatus.LENGTH_REQUIRED, b"The request needs a Content-Length.\n", close=True
            )
            return
        length = int(length_header)
        if length > MAX_REQUEST_SIZE:
            # Endless data: refused before reading; the unread body makes the connection unusable.
            text = f"The request is {length} bytes; at most {MAX_REQUEST_SIZE} are accepted.\n"
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, text.encode(), close=True)
            return
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            body = b""  # a slow sender is dropped after request_timeout (slowloris)
        if len(body) != length:
            self.close_connection = True
            return
        witness = self.server.witness
        try:
            answer = witness.add_checkpoint(body, now=int(self.server.clock()))
        except ConflictError as err:
            status = http_status(err)
            _log.info("witness refused a checkpoint (%s): %s", err.reason, err)
            self._reply(status, f"{err.known_size}\n".encode(), content_type=SIZE_CONTENT_TYPE)
            return
        except ProvenanceError as err:
            status = http_status(err)
            _log.info("witness refused a checkpoint (%s): %s", err.reason, err)
            self._reply(status, f"{err}\n".encode())
            return
        self._reply(HTTPStatus.OK, answer)

    def do_GET(self) -> None:
        self._reply(
            HTTPStatus.METHOD_NOT_ALLOWED, b"Use POST /add-checkpoint.\n", allow="POST", close=False
        )

    def _reply(
        self,
        status: HTTPStatus,
        body: bytes,
        *,
        content_type: str = "text/plain; charset=utf-8",
        allow: str | None = None,
        close: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if allow is not None:
            self.send_header("Allow", allow)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — stdlib signature
        # The stdlib writes every request to stderr; route it to logging instead.
        _log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Reuse the port right after a restart (TIME_WAIT), as every HTTP server does.
    allow_reuse_address = True
    witness: Witness
    clock: Callable[[], float]

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver prints tracebacks to stderr; send them to logging with the peer instead.
        _log.warning("witness connection %r from %s failed", request, client_address, exc_info=True)


class WitnessServer:
    """A witness served over HTTP; ``127.0.0.1`` and a free port unless told otherwise.

    ``clock`` gives the cosignature time (POSIX seconds); tests pass a fixed one. Start it in a
    background thread with :meth:`start` (named ``witness-http``) or run :meth:`serve_forever`
    in the foreground; :meth:`close` stops it and releases the port.
    """

    def __init__(
        self,
        witness: Witness,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        request_timeout: float = 10.0,
    ) -> None:
        handler = type("_TimedHandler", (_Handler,), {"timeout": request_timeout})
        try:
            self._server = _Server((host, port), handler)
        except OSError as exc:
            raise UnavailableError(
                f"The witness cannot listen on {host}:{port} ({exc.strerror}); pick a free port "
                "or stop the program using it.",
                reason="witness-listen",
            ) from exc
        self._server.witness = witness
        self._server.clock = clock
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one when 0 was asked for)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The submission prefix, e.g. ``http://127.0.0.1:41234``."""
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`close` is called from another thread (or the process ends)."""
        self._server.serve_forever(poll_interval=0.05)

    def start(self) -> Self:
        """Serve in a background thread named ``witness-http``; return ``self``."""
        self._thread = threading.Thread(target=self.serve_forever, name="witness-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
