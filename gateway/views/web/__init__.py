"""``provgw ui``: the biomed engineers' read-only web UI.

Pages (server-rendered HTML, no JavaScript, one small stylesheet; each also as JSON under
``/api/...``): ``/`` the fleet (devices, stored and quarantined totals, the log's latest
checkpoint), ``/devices/<id>`` a device's history with each event's proof state and its receipt
bundle (``/receipts/<event id>.cbor``, the bytes ``provgw log prove --out`` writes),
``/recalls`` and ``/recalls/<id>`` impact and remediation per device (``manifest:<digest>``
campaigns too), ``/quarantine`` refused messages.

Why the standard library's :class:`http.server.ThreadingHTTPServer` and no framework: the UI is
a handful of GET pages for the local operator, rendered from the same store calls as the CLI.
A framework would add a dependency (and its CVE stream) to a medical-device gateway for routing
we write in twenty lines; the parts that matter for safety -- escaping everything, strict
headers, GET only, bounded parameters, a read-only database -- are ours to get right either way
and are tested here. ``http.server`` is not meant to face the internet, which is why the UI
binds 127.0.0.1 by default and refuses Host headers that are not loopback (DNS rebinding).

Security: every value from the store is escaped (device-provided strings are
attacker-controlled); ``Content-Security-Policy: default-src 'none'; style-src 'self'``,
``X-Content-Type-Options: nosniff``; any other method than GET/HEAD gets 405; the database is
opened ``mode=ro`` per request (:class:`~gateway.store.readonly.ReadOnlyDatabase`), so the UI
cannot change it and never blocks ingest (WAL readers do not block the writer).
"""

from gateway.views.web._server import SECURITY_HEADERS, UiServer, make_server

__all__ = ["SECURITY_HEADERS", "UiServer", "make_server"]
