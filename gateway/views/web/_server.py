"""The HTTP side of the web UI: routing, parameters, headers, errors."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.core.errors import ProvenanceError, UnavailableError
from gateway.ledger.keys import GatewayKey
from gateway.store.devices import StandingCache
from gateway.store.readonly import ReadOnlyDatabase
from gateway.store.trust_files import TrustFolder
from gateway.views.web import _data, _html

if TYPE_CHECKING:
    from gateway.core.identity import TrustStore

__all__ = ["SECURITY_HEADERS", "UiServer", "make_server"]

_log = logging.getLogger(__name__)

#: Sent with every response. CSP: no script, no frame, styles only from /style.css; nosniff: a
#: browser never guesses another type than the one sent (a receipt is never run as a page).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_MAX_TARGET = 2048  # request-target length (path and query) accepted
_MAX_PARAM = 128  # characters of one query value
_REASON = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")
_LOOPBACK_NAMES = {"localhost"}


class _BadRequestError(Exception):
    """A parameter the UI does not accept; the message says which and why."""


class _NotFoundError(Exception):
    """No such page, device, recall or receipt; the message says which."""


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str
    extra: tuple[tuple[str, str], ...] = ()


def _int(
    query: Mapping[str, list[str]], name: str, default: int | None, low: int, high: int
) -> int | None:
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    if not text.isdigit() or len(text) > 12 or not low <= int(text) <= high:
        msg = f"{name} must be a whole number from {low} to {high}"
        raise _BadRequestError(msg)
    return int(text)


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    build: Callable[[_data.Page, re.Match[str], Mapping[str, list[str]]], dict[str, Any] | None]
    render: Callable[[Mapping[str, Any]], str]
    what: str


def _overview(page: _data.Page, _m: re.Match[str], q: Mapping[str, list[str]]) -> dict[str, Any]:
    limit = _int(q, "limit", 500, 1, 5000)
    offset = _int(q, "offset", 0, 0, 10**9)
    assert limit is not None
    assert offset is not None
    return _data.overview_page(page, limit=limit, offset=offset)


def _device(
    page: _data.Page, m: re.Match[str], q: Mapping[str, list[str]]
) -> dict[str, Any] | None:
    limit = _int(q, "limit", 200, 1, 2000)
    assert limit is not None
    return _data.device_page(page, urllib.parse.unquote(m["id"]), limit=limit)


def _recalls(page: _data.Page, _m: re.Match[str], _q: Mapping[str, list[str]]) -> dict[str, Any]:
    return _data.recalls_page(page)


def _recall(
    page: _data.Page, m: re.Match[str], _q: Mapping[str, list[str]]
) -> dict[str, Any] | None:
    return _data.recall_page(page, urllib.parse.unquote(m["id"]))


def _quarantine(page: _data.Page, _m: re.Match[str], q: Mapping[str, list[str]]) -> dict[str, Any]:
    reason = q["reason"][-1] if q.get("reason") else None
    if reason is not None and not _REASON.match(reason):
        msg = "reason must be a reason token such as bad-signature"
        raise _BadRequestError(msg)
    limit = _int(q, "limit", 100, 1, 1000)
    assert limit is not None
    before = _int(q, "before", None, 1, 2**62)
    return _data.quarantine_page(page, reason=reason, limit=limit, before=before)


_ID = r"(?P<id>[^/]{1,512})"
_ROUTES = (
    _Route(re.compile(r"/(?:overview)?\Z"), _overview, _html.overview_html, "page"),
    _Route(re.compile(rf"/devices/{_ID}\Z"), _device, _html.device_html, "device"),
    _Route(re.compile(r"/recalls\Z"), _recalls, _html.recalls_html, "page"),
    _Route(re.compile(rf"/recalls/{_ID}\Z"), _recall, _html.recall_html, "recall"),
    _Route(re.compile(r"/quarantine\Z"), _quarantine, _html.quarantine_html, "page"),
)
_RECEIPT = re.compile(r"/receipts/(?P<id>[0-9]{1,18})\.cbor\Z")
#: A device's exports: its FHIR Bundle, its audit bundle.
_EXPORT = re.compile(rf"/devices/{_ID}/(?P<kind>fhir|audit)\Z")
_UNSAFE_IN_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


class UiServer(ThreadingHTTPServer):
    """The web UI's HTTP server: one thread per request, each with its own read-only connection.

    *db_path* is the gateway's SQLite file (opened ``mode=ro`` per request); *key* the gateway
    log key, needed only to issue receipts (the same bytes ``provgw log prove --out`` writes) and
    to name the log; without it those parts say so. *trust* is the gateway's trust folder, read
    again when its files change (as the verifiers read it), for the device pages' certificate
    checks; without it they say the certificate was not checked.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        db_path: Path,
        key: GatewayKey | None,
        trust: TrustFolder | None = None,
    ) -> None:
        self.db_path = db_path
        self.key = key
        self._trust = trust
        self._trust_lock = threading.Lock()
        self._standings = StandingCache()
        super().__init__(address, _Handler)
        host = str(self.server_address[0])
        self.loopback = _is_loopback(host)

    @property
    def url(self) -> str:
        """The overview's URL."""
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def respond(self, method: str, target: str, host_header: str | None) -> _Reply:
        """Answer one request (the handler only moves bytes); never raises."""
        try:
            return self._respond(method, target, host_header)
        except UnavailableError as err:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(err), api=target.startswith("/api/"))
        except ProvenanceError as err:
            return _error(HTTPStatus.NOT_FOUND, str(err), api=target.startswith("/api/"))

    def _respond(self, method: str, target: str, host_header: str | None) -> _Reply:
        api = target.startswith("/api/")
        refused = self._refusal(method, target, host_header, api=api)
        if refused is not None:
            return refused
        parts = urllib.parse.urlsplit(target)
        path = parts.path
        if path == "/style.css":
            return _Reply(HTTPStatus.OK, _html.STYLE.encode(), "text/css; charset=utf-8")
        try:
            query = _query(parts.query)
            if receipt := _RECEIPT.match(path):
                return self._receipt(int(receipt["id"]))
            if export := _EXPORT.match(path):
                device_id = urllib.parse.unquote(export["id"])
                return self._fhir(device_id) if export["kind"] == "fhir" else self._audit(device_id)
            return self._route(path.removeprefix("/api") if api else path, query, api=api)
        except (_BadRequestError, ValueError) as err:
            return _error(HTTPStatus.BAD_REQUEST, f"Bad request: {err}.", api=api)

    def _refusal(self, method: str, target: str, host: str | None, *, api: bool) -> _Reply | None:
        if method not in {"GET", "HEAD"}:
            reply = _error(
                HTTPStatus.METHOD_NOT_ALLOWED, "This UI is read-only: GET only.", api=api
            )
            return _Reply(reply.status, reply.body, reply.content_type, (("Allow", "GET, HEAD"),))
        if self.loopback and not _loopback_host(host, int(self.server_address[1])):
            # DNS rebinding: a web page elsewhere must not read the fleet through a name that
            # resolves to 127.0.0.1.
            return _error(HTTPStatus.MISDIRECTED_REQUEST, "Use the URL provgw ui printed.", api=api)
        if len(target) > _MAX_TARGET:
            return _error(HTTPStatus.REQUEST_URI_TOO_LONG, "The address is too long.", api=api)
        return None

    def _route(self, path: str, query: Mapping[str, list[str]], *, api: bool) -> _Reply:
        for route in _ROUTES:
            match = route.pattern.match(path)
            if match is None:
                continue
            with self._page() as page:
                data = route.build(page, match, query)
            if data is None:
                what = urllib.parse.unquote(match["id"])
                return _error(HTTPStatus.NOT_FOUND, f"No {route.what} {what!r} here.", api=api)
            if api:
                body = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
                return _Reply(HTTPStatus.OK, body, "application/json")
            return _Reply(HTTPStatus.OK, route.render(data).encode(), "text/html; charset=utf-8")
        return _error(HTTPStatus.NOT_FOUND, f"No page {path!r} here.", api=api)

    def _receipt(self, event_id: int) -> _Reply:
        with self._page() as page:
            bundle = _data.receipt_bundle(page, event_id)
        if bundle is None:
            return _error(HTTPStatus.NOT_FOUND, f"No receipt for event {event_id}.", api=False)
        return _attachment(bundle, "application/cbor", f"event-{event_id}.receipt.cbor")

    def _fhir(self, device_id: str) -> _Reply:
        # Here, not at the top: fhir.resources (pydantic models) takes 0.2 s to import.
        from gateway.views.fhir import device_bundle  # noqa: PLC0415

        with self._page() as page:
            exported = device_bundle(page.db, device_id, now=datetime.now(UTC))
        if exported is None:
            return _error(HTTPStatus.NOT_FOUND, f"No device {device_id!r} here.", api=False)
        body = exported.to_json().encode()
        return _attachment(body, "application/fhir+json", f"{_file_name(device_id)}.fhir.json")

    def _audit(self, device_id: str) -> _Reply:
        # Here, not at the top: the audit code (recall notices, claims) is for this download only.
        from gateway.views.audit import export_audit  # noqa: PLC0415

        if self.key is None:
            return _error(
                HTTPStatus.NOT_FOUND,
                "Audit bundles need the gateway log key (its receipts are signed with it), "
                "which this UI was not given.",
                api=False,
            )
        with self._page() as page:
            exported = export_audit(page.db, self.key, device_id, now=datetime.now(UTC))
        if exported is None:
            return _error(
                HTTPStatus.NOT_FOUND, f"No enrolled device {device_id!r} here.", api=False
            )
        return _attachment(exported.data, "application/zip", f"{_file_name(device_id)}.audit.zip")

    def _page(self) -> _PageContext:
        return _PageContext(self.db_path, self.key, self._trust_store(), self._standings)

    def _trust_store(self) -> TrustStore | None:
        if self._trust is None:
            return None
        with self._trust_lock:  # one request at a time reads a changed folder again
            self._trust.changed()
            return self._trust.store


def _file_name(device_id: str) -> str:
    """Return *device_id* made safe as a file name (the id is the device's to choose)."""
    return _UNSAFE_IN_FILENAME.sub("_", device_id)[:100]


def _attachment(body: bytes, content_type: str, file_name: str) -> _Reply:
    """Return a download: *body* as *content_type*, saved as *file_name* (already safe)."""
    disposition = f'attachment; filename="{file_name}"'
    return _Reply(HTTPStatus.OK, body, content_type, (("Content-Disposition", disposition),))


class _PageContext:
    """One request's read-only connection and snapshot."""

    def __init__(
        self,
        db_path: Path,
        key: GatewayKey | None,
        trust: TrustStore | None,
        standings: StandingCache,
    ) -> None:
        self._db = ReadOnlyDatabase(db_path)
        self._key = key
        self._trust = trust
        self._standings = standings
        self._snapshot = self._db.snapshot()

    def __enter__(self) -> _data.Page:
        self._snapshot.__enter__()
        return _data.Page(self._db, self._key, self._trust, self._standings)

    def __exit__(self, *exc: object) -> None:
        try:
            self._snapshot.__exit__(None, None, None)
        finally:
            self._db.close()


def _query(text: str) -> dict[str, list[str]]:
    query = urllib.parse.parse_qs(text, keep_blank_values=True, max_num_fields=8)
    if any(len(v) > _MAX_PARAM for values in query.values() for v in values):
        msg = "a query parameter is too long"
        raise _BadRequestError(msg)
    return query


def _error(status: HTTPStatus, message: str, *, api: bool) -> _Reply:
    if api:
        body = json.dumps({"error": message, "status": int(status)}).encode()
        return _Reply(status, body, "application/json")
    page = _html.error_html(int(status), status.phrase, message)
    return _Reply(status, page.encode(), "text/html; charset=utf-8")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_host(header: str | None, port: int) -> bool:
    if not header:
        return False
    host, _, given = header.rpartition(":")
    if not host or given != str(port):
        host, given = header, ""
    return _is_loopback(host.strip("[]")) and given in {str(port), ""}


class _Handler(BaseHTTPRequestHandler):
    """Moves bytes between the socket and :meth:`UiServer.respond`."""

    server: UiServer
    server_version = "provgw-ui"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        """Serve a page."""
        self._answer("GET")

    def do_HEAD(self) -> None:
        """Serve a page's headers only."""
        self._answer("HEAD")

    def _refuse(self) -> None:
        # The body is never read: close the connection instead of parsing it.
        self.close_connection = True
        self._answer(self.command)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _refuse  # noqa: N815

    def _answer(self, method: str) -> None:
        reply = self.server.respond(method, self.path, self.headers.get("Host"))
        self.send_response(reply.status)
        for name, value in (*SECURITY_HEADERS.items(), *reply.extra):
            self.send_header(name, value)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the base's name
        """Log requests at debug level, not on stderr for every page."""
        _log.debug("%s " + format, self.address_string(), *args)


def make_server(
    db_path: Path,
    key: GatewayKey | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    trust_dir: Path | None = None,
) -> UiServer:
    """Bind the UI to *host*:*port* (0: a free port); call ``serve_forever()`` to run it.

    The database and the trust folder are checked now (the database exists and is migrated,
    the folder loads), so a wrong path fails before any request.
    """
    ReadOnlyDatabase(db_path).close()
    trust = None if trust_dir is None else TrustFolder(trust_dir)
    return UiServer((host, port), db_path, key, trust)
