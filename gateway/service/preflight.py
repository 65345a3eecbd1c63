"""``provgw serve``'s checks before any child starts, run in a process of their own.

:func:`preflight` checks the trust store (and the urgent lane's manufacturer and recall keys),
opens the database (applying pending migrations once, not racing in N workers) and connects to the
broker; :func:`prepare` runs it and then makes the keys a first start needs (the log's and the
embedded witness's, the urgent lane's offer key), once, before any process could race to make
them.

The supervisor runs all of this through :func:`run_checked`, in a short-lived child
(``python -P -m gateway.service.preflight CONFIG``), not in its own interpreter: the checks load
modules the supervisor never needs again -- the manifest, recall and SBOM checks, paho, the
ledger's and the lane's key handling -- and a Python process keeps what it imported for the rest of
its life. Measured with ``bench/bench_ingest.py``'s per-process PSS: the supervisor's went from
28.9 to 22.0 MB under load (``docs/BENCHMARKS.md``, session 16).

The child names itself ``provgw preflight (CONFIG)`` in ``ps`` and prints one JSON line:
``{"ok": {...}}``, or ``{"error": {"type", "reason", "message"}}`` for a
:class:`~gateway.core.errors.ProvenanceError`, which :func:`run_checked` raises again in the
supervisor as the same class, so ``provgw serve`` exits and words it exactly as before. Its log
lines (a database upgrade, say) go to the supervisor's stderr.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.core import errors
from gateway.core.errors import ProvenanceError, UnavailableError

if TYPE_CHECKING:
    from gateway.service.config import GatewayConfig

__all__ = ["preflight", "prepare", "run_checked"]


def preflight(config: GatewayConfig) -> dict[str, Any]:
    """Check trust store, database and broker before any worker starts; say what is wrong.

    Raises :class:`~gateway.core.errors.VerificationError` (trust directory) or
    :class:`UnavailableError` (database, broker) with a sentence naming the fix.
    """
    # Imported here, not at the top: the supervisor imports this module for run_checked.
    from gateway.ingest.broker_config import BrokerConfig  # noqa: PLC0415
    from gateway.ingest.mqtt import MqttClient  # noqa: PLC0415
    from gateway.store.db import Database  # noqa: PLC0415
    from gateway.store.events import EventStore  # noqa: PLC0415
    from gateway.store.trust_files import load_trust_dir  # noqa: PLC0415

    trust = load_trust_dir(config.trust_dir)
    if config.urgent.enabled:
        from gateway.store.manifests import load_manifest_trust  # noqa: PLC0415
        from gateway.store.recalls import load_recall_trust  # noqa: PLC0415

        # A wrong manufacturer key directory is a configuration error (exit 2) now, not a lane
        # process that dies at every restart.
        if config.urgent.manifest_trust is not None:
            load_manifest_trust(config.urgent.manifest_trust)
        if config.urgent.recall_trust is not None:
            load_recall_trust(config.urgent.recall_trust)
    with Database(config.database) as db:
        stored = EventStore(db).count()
    admin = config.broker.config_dir
    creds = config.credentials(0)
    # The gateway-admin identity checks reachability without touching a worker's session.
    try:
        admin_creds = BrokerConfig.load(admin).client("gateway-admin")
    except KeyError:
        admin_creds = creds
    probe = MqttClient(
        admin_creds, host=config.broker.host, port=config.broker.port, session_expiry=0
    )
    try:
        probe.connect()
    except UnavailableError as err:
        raise UnavailableError(
            f"{err} Is Mosquitto running (`mosquitto -c {admin / 'mosquitto.conf'}`) and "
            f"listening on {config.broker.host}:{config.broker.port} (broker.host/port in "
            f"{config.path})? The client files are in {admin / 'clients'}.",
            reason=err.reason,
        ) from err
    probe.disconnect()
    return {"roots": len(trust.roots), "events_stored": stored}


def prepare(config: GatewayConfig) -> dict[str, Any]:
    """Run :func:`preflight`, then make or load the keys: what the start line reports.

    Returns ``{"checked": ..., "ledger": ..., "offer_key": ...}`` (the last two None when the
    ledger or the urgent lane is off).
    """
    checked = preflight(config)
    ledger = None
    if config.log.enabled:
        from gateway.service.ledger_service import prepare_ledger  # noqa: PLC0415

        ledger = prepare_ledger(config).status(config)
    offer_key = None
    if config.urgent.enabled:
        from gateway.service.urgent import prepare_offer_key  # noqa: PLC0415

        offer_key = prepare_offer_key(config).status()
    return {"checked": checked, "ledger": ledger, "offer_key": offer_key}


def run_checked(config: GatewayConfig) -> dict[str, Any]:
    """Run :func:`prepare` for *config* in a child process; return its result or raise its error.

    Raises the child's :class:`~gateway.core.errors.ProvenanceError` as the same class, with the
    same reason and sentence; :class:`UnavailableError` if the child ends without a result.
    """
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed module, the config's path
        [sys.executable, "-P", "-m", __name__, str(config.path)],
        stdout=subprocess.PIPE,
        check=False,
    )
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        answer = None
    if isinstance(answer, dict) and "ok" in answer:
        result: dict[str, Any] = answer["ok"]
        return result
    if isinstance(answer, dict) and "error" in answer:
        error = answer["error"]
        kind = getattr(errors, error["type"], None)
        if isinstance(kind, type) and issubclass(kind, ProvenanceError):
            raise kind(error["message"], reason=error["reason"])
    raise UnavailableError(
        f"The start-up checks of {config.path} ended without a result (exit status "
        f"{done.returncode}); the lines above say why.",
        reason="preflight-failed",
    )


def main(argv: list[str]) -> int:
    """Run the child's end of :func:`run_checked`: print one JSON line; 0 if the checks passed."""
    from setproctitle import setproctitle  # noqa: PLC0415

    from gateway.service import child  # noqa: PLC0415
    from gateway.service.config import load_config  # noqa: PLC0415

    # ``provgw preflight (CONFIG)`` in ps and top, as the other children name themselves: a
    # long database upgrade is seen for what it is.
    setproctitle(child.title("preflight", argv[0]))
    logging.basicConfig(level=logging.INFO, format=child.SUPERVISOR_LOG_FORMAT)
    try:
        result: dict[str, Any] = {"ok": prepare(load_config(Path(argv[0])))}
    except ProvenanceError as err:
        # The nearest class the parent can name (gateway.core.errors'), should a module raise
        # a subclass of its own.
        kind = next(c for c in type(err).__mro__ if getattr(errors, c.__name__, None) is c)
        result = {"error": {"type": kind.__name__, "reason": err.reason, "message": err.message}}
    print(json.dumps(result), flush=True)  # noqa: T201 - the answer to the parent
    return 0 if "ok" in result else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
