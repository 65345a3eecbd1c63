"""Server-rendered HTML for the web UI: every value from the store goes through :func:`esc`.

Device ids, topics, sites, models, event fields and quarantine reasons are attacker-controlled
(a device or a broker client chose them), so nothing is interpolated without
:func:`html.escape` (``quote=True``: safe in attribute values too), and URLs are built with
:func:`urllib.parse.quote` before escaping. No script, no inline style, no external asset: the
Content-Security-Policy (``default-src 'none'; style-src 'self'``) allows only ``/style.css``.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "STYLE",
    "device_html",
    "device_url",
    "error_html",
    "esc",
    "overview_html",
    "quarantine_html",
    "recall_html",
    "recall_url",
    "recalls_html",
]

#: The one stylesheet (served as /style.css).
STYLE = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem;
       color: #1b1f24; }
nav { border-bottom: 1px solid #ccd; margin-bottom: 1rem; padding-bottom: .5rem; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #e3e6ea; padding: .25rem .5rem; text-align: left;
         vertical-align: top; }
th { background: #f3f5f7; }
code, .mono { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.state { border-radius: 3px; padding: 0 .4rem; white-space: nowrap; }
.anchored, .installed { background: #cdeccd; }
.witnessed { background: #d7e8fb; }
.logged, .offered, .appended { background: #fdf0c4; }
.stored, .pending { background: #eee; }
.failed, .unreachable, .erased { background: #f8d0d0; }
.muted { color: #667; }
"""


def esc(value: object) -> str:
    """Escape *value* for HTML text and attribute values; None shows as a dash."""
    return "-" if value is None else html.escape(str(value), quote=True)


def device_url(device_id: str) -> str:
    """Return the device page's path (the id percent-encoded: it may hold any character)."""
    return "/devices/" + urllib.parse.quote(device_id, safe="")


def recall_url(recall_id: str) -> str:
    """Return the recall (or ``manifest:<digest>`` campaign) page's path."""
    return "/recalls/" + urllib.parse.quote(recall_id, safe=":")


def _link(href: str, text: object) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def _state(state: object) -> str:
    return f'<span class="state {esc(state)}">{esc(state)}</span>'


def _layout(title: str, body: str, api: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)} - Provenance Gateway</title><link rel="stylesheet" href="/style.css">'
        "</head><body><nav>"
        '<a href="/">Fleet</a><a href="/recalls">Recalls</a><a href="/quarantine">Quarantine</a>'
        f'<span class="muted">read-only &middot; {_link(api, "this page as JSON")}</span>'
        f"</nav><h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], empty: str) -> str:
    # Cells arrive already escaped (or built from escaped parts).
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{esc(n)} {esc(k)}" for k, n in sorted(counts.items())) or "none"


def _witnessed_cell(cp: Mapping[str, Any]) -> str:
    # Witnessed = the witness quorum reached; fewer cosignatures are shown, not called witnessed.
    count = cp["cosignatures"]
    cosignatures = f"{esc(count)} cosignature{'' if count == 1 else 's'}"
    if cp["witnessed"]:
        return f"yes ({cosignatures}, quorum reached)"
    return f"no ({cosignatures}, quorum not reached)" if count else "no"


def _checkpoint_html(cp: Mapping[str, Any] | None) -> str:
    if cp is None:
        return '<p class="muted">The log key is not available: no checkpoint to show.</p>'
    if cp["size"] is None:
        return (
            f"<p>Transparency log <code>{esc(cp['origin'])}</code>: no signed checkpoint yet "
            f"({esc(cp['log_size'])} entries, {esc(cp['pending_events'])} events pending).</p>"
        )
    anchor = cp["anchor"]
    anchored = f"yes, on {esc(anchor['chain'])} block {esc(anchor['block'])}" if anchor else "no"
    return _table(
        ["log", "size", "signed", "witnessed", "anchored", "state", "root"],
        [
            [
                f"<code>{esc(cp['origin'])}</code>",
                esc(cp["size"]),
                esc(cp["signed"]),
                _witnessed_cell(cp),
                anchored,
                _state(cp["state"]),
                f'<span class="mono">{esc(cp["root"])}</span>',
            ]
        ],
        "",
    ) + (
        f'<p class="muted">{esc(cp["log_size"])} log entries; '
        f"{esc(cp['pending_events'])} stored events not logged yet.</p>"
    )


def _identity(device: Mapping[str, Any]) -> str:
    """Revoked here, refused by the trust folder, enrolled, or not enrolled (overview column)."""
    certificate = device["certificate"]
    if device["revoked"]:
        return "revoked"
    if certificate is not None and not certificate["accepted"]:
        return f'<span class="state failed">refused ({esc(certificate["reason"])})</span>'
    return "enrolled" if device["enrolled"] else "not enrolled"


def overview_html(data: Mapping[str, Any]) -> str:
    """``/``: the fleet."""
    rows = [
        [
            _link(device_url(d["device_id"]), d["device_id"]),
            esc(d["model"]),
            esc(d["manufacturer"]),
            esc(d["site"]),
            esc(d["department"]),
            esc(d["firmware"]),
            esc(d["last_event"]),
            esc(d["events"]),
            _identity(d),
        ]
        for d in data["devices"]
    ]
    shown = len(data["devices"])
    more = (
        f'<p class="muted">Devices {esc(data["offset"] + 1)}-{esc(data["offset"] + shown)} of '
        f"{esc(data['devices_total'])}.</p>"
        if shown < data["devices_total"]
        else ""
    )
    body = (
        f"<p>{esc(data['stored'])} events stored, "
        f"{_link('/quarantine', str(data['quarantined']) + ' messages quarantined')} "
        f"({_pairs(data['quarantined_by_reason'])}).</p>"
        "<h2>Transparency log</h2>"
        f"{_checkpoint_html(data['checkpoint'])}"
        f"<h2>Devices ({esc(data['devices_total'])})</h2>"
        + _table(
            [
                "device",
                "model",
                "manufacturer",
                "site",
                "department",
                "firmware",
                "last event (UTC)",
                "events",
                "identity",
            ],
            rows,
            "No device yet.",
        )
        + more
    )
    return _layout("Fleet overview", body, "/api/overview")


def _certificate(enrolled: Mapping[str, Any]) -> str:
    """Show the device's certificate chain as the trust folder judges it now (``standing``)."""
    if not enrolled:
        return esc(None)
    certificate = enrolled["certificate"]
    if certificate is None:
        return '<span class="muted">not checked (no trust folder)</span>'
    if certificate["accepted"]:
        return esc(f"valid until {certificate['valid_until']}")
    return (
        f'<span class="state failed">refused ({esc(certificate["reason"])})</span> '
        f"{esc(certificate['detail'])}"
    )


def device_html(data: Mapping[str, Any]) -> str:
    """``/devices/<id>``: the device's history with proofs."""
    inv = data["inventory"] or {}
    enrolled = data["enrolled"] or {}
    facts = _table(
        [
            "model",
            "manufacturer",
            "site",
            "department",
            "firmware",
            "enrolled",
            "revoked",
            "certificate",
        ],
        [
            [
                esc(inv.get("model")),
                esc(inv.get("manufacturer") or enrolled.get("manufacturer")),
                esc(inv.get("site")),
                esc(inv.get("department")),
                esc(inv.get("firmware")),
                esc(enrolled.get("enrolled")),
                esc(
                    f"{enrolled['revoked']} ({enrolled['revoked_reason'] or 'no reason given'})"
                    if enrolled.get("revoked")
                    else None
                ),
                _certificate(enrolled),
            ]
        ],
        "",
    )
    rows = [
        [
            esc(e["time"]),
            esc(e["type"]),
            esc(e["seq"]),
            esc(e["summary"]),
            _state(e["proof"])
            + (
                f' <span class="muted">entry {esc(e["leaf_index"])}</span>'
                if e["leaf_index"] is not None
                else ""
            ),
            _link(e["receipt"], "receipt (CBOR)") if e["receipt"] else "-",
        ]
        for e in data["events"]
    ]
    shown = len(data["events"])
    note = (
        f'<p class="muted">Newest {esc(shown)} of {esc(data["events_total"])} events.</p>'
        if shown < data["events_total"]
        else ""
    )
    receipts = (
        "<p>Each receipt bundle is the file <code>provgw log prove EVENT_ID --out</code> writes: "
        "an RFC 9942 receipt with its checkpoint (and witness cosignatures, chain anchor), "
        "verifiable offline with the gateway's public key.</p>"
        if data["receipts"]
        else '<p class="muted">Receipts need the gateway log key, which is not available.</p>'
    )
    body = (
        facts
        + f"<h2>History ({esc(data['events_total'])} events)</h2>"
        + '<p class="muted">Proof: stored &rarr; appended (in the log) &rarr; logged (under a '
        "signed checkpoint) &rarr; witnessed (the witness quorum reached) &rarr; anchored. "
        + esc(data["proof_note"])
        + "</p>"
        + _table(
            ["event time (UTC)", "type", "seq", "what", "proof", "download"], rows, "No events."
        )
        + note
        + receipts
        + f"<p>{_link(data['fhir'], 'FHIR bundle of this device')} (JSON, FHIR R4B): the device "
        "and one Provenance per event with the bytes it signed, as "
        "<code>provgw device fhir</code> writes it, for the hospital's systems.</p>"
        + (
            f"<p>{_link(data['audit'], 'Audit bundle of this device')} (ZIP): every event's "
            "signed bytes, salt and receipt, its certificate chain, erasures and revocation, as "
            "<code>provgw audit export</code> writes it, for a manufacturer or an auditor to "
            "check offline with <code>provgw audit verify</code>.</p>"
            if data["audit"]
            else ""
        )
    )
    return _layout(f"Device {data['device_id']}", body, "/api" + device_url(data["device_id"]))


def recalls_html(data: Mapping[str, Any]) -> str:
    """``/recalls``: every recall and urgent-manifest campaign."""
    recalls = [
        [
            _link(recall_url(r["id"]), r["id"]),
            esc(r["class"]),
            esc(r["status"]),
            "signed" if r["signed"] else "UNSIGNED",
            esc(r["reason"]),
            esc(r["affected"]),
            _pairs(r["states"]),
        ]
        for r in data["recalls"]
    ]
    campaigns = [
        [
            _link(recall_url(c["id"]), c["id"][:25] + ".."),
            esc(c["version"]),
            esc(c["devices"]),
            _pairs(c["counts"]),
        ]
        for c in data["campaigns"]
    ]
    body = (
        _table(
            ["recall", "class", "status", "signature", "reason", "devices", "remediation"],
            recalls,
            "No recall held.",
        )
        + "<h2>Urgent manifests offered without a recall</h2>"
        + _table(["campaign", "firmware", "devices", "remediation"], campaigns, "None.")
    )
    return _layout("Recalls", body, "/api/recalls")


def _matched(matches: Iterable[Mapping[str, Any]]) -> str:
    return "<br>".join(
        f"rule {esc(m['rule'])} ({esc(m['kind'])}): {esc(m['detail'])}" for m in matches
    )


def _remedy(remedy: object, manifest: object) -> str:
    """Render a recall's remedy ({action, manifest}) or a campaign's manifest digest."""
    if isinstance(remedy, Mapping):
        action = esc(remedy.get("action")) if remedy.get("action") else ""
        digest = remedy.get("manifest")
        shown = f' <span class="mono">manifest {esc(digest)}</span>' if digest else ""
        return (action + shown).strip() or "-"
    if remedy is not None:
        return esc(remedy)
    return f'<span class="mono">{esc(manifest)}</span>'


def recall_html(data: Mapping[str, Any]) -> str:
    """``/recalls/<id>``: impact and per-device remediation."""
    status = data["status"]
    recall = status["recall"]
    head = _table(
        ["id", "class", "status", "reason", "remedy", "devices", "remediation"],
        [
            [
                esc(recall.get("id")),
                esc(recall.get("class")),
                esc(recall.get("status")),
                esc(recall.get("reason") or recall.get("version")),
                _remedy(recall.get("remedy"), recall.get("manifest")),
                esc(status["total"]),
                _pairs(status["counts"]),
            ]
        ],
        "",
    )
    remediation = _table(
        ["device", "state", "attempts", "matched rule", "detail"],
        [
            [
                _link(device_url(d["device_id"]), d["device_id"]),
                _state(d["state"]),
                esc(d["attempts"]),
                _matched(d["matched"]) or "-",
                esc(d["detail"]),
            ]
            for d in status["devices"]
        ],
        "No device tracked.",
    )
    impact = data["impact"]
    if impact is None:
        impact_html = f'<p class="muted">{esc(data["impact_note"])}</p>'
    else:
        rules = "".join(f"<li>rule {i}: {esc(text)}</li>" for i, text in enumerate(impact["rules"]))
        impact_html = (
            f"<ul>{rules}</ul>"
            + _table(
                ["device", "model", "firmware", "site", "matched rule"],
                [
                    [
                        _link(device_url(a["device_id"]), a["device_id"]),
                        esc(a["model"]),
                        esc(a["version"]),
                        esc(a["site"]),
                        _matched(a["matched"]),
                    ]
                    for a in impact["affected"]
                ],
                "No device affected.",
            )
            + _table(
                ["undetermined device", "model", "firmware", "why"],
                [
                    [
                        _link(device_url(u["device_id"]), u["device_id"]),
                        esc(u["model"]),
                        esc(u["version"]),
                        _matched(u["undetermined"]),
                    ]
                    for u in impact["undetermined"]
                ],
                "No undetermined device.",
            )
        )
    body = (
        head
        + "<h2>Remediation per device</h2>"
        + remediation
        + "<h2>Impact on the inventory</h2>"
        + impact_html
    )
    return _layout(f"Recall {data['recall_id']}", body, "/api" + recall_url(data["recall_id"]))


def quarantine_html(data: Mapping[str, Any]) -> str:
    """``/quarantine``: refused messages (never their bytes)."""
    counts = " ".join(
        _link("/quarantine?reason=" + urllib.parse.quote(k, safe=""), f"{k} ({n})")
        for k, n in data["counts"].items()
    )
    rows = [
        [
            esc(r["received"]),
            esc(r["reason"]),
            esc(r["detail"]),
            f"<code>{esc(r['topic'])}</code>",
            esc(r["device_hint"]),
            f'{esc(r["bytes"])} bytes, sha256 <span class="mono">{esc(r["sha256"][:16])}..</span>',
        ]
        for r in data["rows"]
    ]
    query = {"before": data["next_before"], "limit": data["limit"]}
    if data["reason"]:
        query["reason"] = data["reason"]
    more = (
        _link("/quarantine?" + urllib.parse.urlencode(query), "older")
        if data["next_before"] is not None
        else ""
    )
    released = (
        f"<p>{esc(data['released'])} more were stored since, after their cause was fixed "
        "(<code>provgw quarantine retry</code>); <code>provgw quarantine list --released</code> "
        "lists them.</p>"
        if data["released"]
        else ""
    )
    not_kept = (
        "<p>Counted, not kept (a device over its quarantine budget, "
        "<code>[ingest] quarantine_per_device_hour</code>):</p>"
        + _table(
            ["hour from (UTC)", "device (claimed)", "reason", "messages", "bytes"],
            [
                [
                    esc(o["hour"]),
                    esc(o["device_hint"] or "(none)"),
                    esc(o["reason"]),
                    esc(o["messages"]),
                    esc(o["bytes"]),
                ]
                for o in data["not_kept"]
            ],
            "",
        )
        if data["not_kept"]
        else ""
    )
    body = (
        f"<p>By reason: {_link('/quarantine', 'all')} {counts}</p>"
        + released
        + not_kept
        + _table(
            ["received (UTC)", "reason", "what was wrong", "topic", "device (claimed)", "message"],
            rows,
            "Nothing quarantined.",
        )
        + more
    )
    return _layout("Quarantine", body, "/api/quarantine")


def error_html(status: int, title: str, message: str) -> str:
    """Render an error page (404, 400, 405, 503) that says what to do."""
    return _layout(f"{status} {title}", f"<p>{esc(message)}</p>", "/api/overview")
