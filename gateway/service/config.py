"""The gateway's configuration file (TOML, read with :mod:`tomllib`): ``provgw serve --config``.

Documented example: ``gateway.example.toml`` at the repository root. Relative paths are resolved
against the folder of the configuration file, so a site directory can be moved as a whole.

Loading checks what can be checked without touching the network, and says what to do when
something is missing (the trust directory: ``provgw-sim pki init``; the broker's client files:
``provgw broker-config``). A :class:`GatewayConfig` that exists is complete and consistent.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.core.errors import MalformedError
from gateway.ingest.broker_config import BrokerConfig, ClientCredentials

__all__ = [
    "INGEST_MODES",
    "BrokerSettings",
    "GatewayConfig",
    "IngestSettings",
    "load_config",
    "worker_client_id",
]

_T = TypeVar("_T")

#: Ways workers can split the event stream (IngestSettings.mode).
INGEST_MODES = ("partitioned", "shared")

#: Client id (= certificate CN) of routine worker 0; worker *i* > 0 is ``gateway-routine-{i+1}``,
#: as ``provgw broker-config --routine-workers N`` issues them.
_ROUTINE_CLIENT = "gateway-routine"


def worker_client_id(index: int) -> str:
    """Return the MQTT client id of routine worker *index* (0-based); stable across restarts.

    Stable ids matter: each worker's persistent session, and the messages the broker queued for
    it while it was away, belong to that id (MQTT 5 §4.1).
    """
    return _ROUTINE_CLIENT if index == 0 else f"{_ROUTINE_CLIENT}-{index + 1}"


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and how the gateway's sessions behave."""

    host: str
    port: int
    #: The directory ``provgw broker-config -o DIR`` wrote (client certificates, site CA).
    config_dir: Path
    #: How long the broker keeps a worker's session and queue while it is away (§3.1.2.11.2).
    session_expiry_s: int = 7 * 24 * 3600
    #: Unacknowledged messages the broker may send one worker (MQTT 5 Receive Maximum): the
    #: bound on what a worker holds in memory. At least one full batch, so batches can fill.
    receive_maximum: int = 1000
    #: MQTT 5 shared-subscription group the workers share (§4.8.2), used in ``shared`` mode.
    share_group: str = "provgw"


@dataclass(frozen=True)
class IngestSettings:
    """Batching and worker processes."""

    #: Worker processes; each verifies and commits its own batches.
    workers: int
    #: How workers split the stream (see :mod:`gateway.service.workers`): ``partitioned`` (each
    #: worker subscribes to every event on its own session and keeps the devices whose id hashes
    #: to it; restart-safe on Mosquitto 2.0.11) or ``shared`` (one MQTT 5 shared subscription).
    mode: str = "partitioned"
    #: A batch is committed when it holds this many messages ...
    batch_max: int = 500
    #: ... or this many milliseconds after its first message arrived, whichever comes first.
    batch_ms: int = 20
    #: A kid-only message from a device another worker is enrolling right now (its first message,
    #: with the certificate chain, went to the other worker) is retried this long before it is
    #: quarantined as ``unknown-kid``.
    enrol_grace_ms: int = 2000


@dataclass(frozen=True)
class GatewayConfig:
    """A loaded, checked ``gateway.toml``."""

    path: Path
    broker: BrokerSettings
    ingest: IngestSettings
    trust_dir: Path
    database: Path
    metrics_host: str
    #: 0 turns the Prometheus endpoint off.
    metrics_port: int
    #: fsync the WAL at every commit (``synchronous=FULL``); see :mod:`gateway.store.db`.
    durable_against_power_loss: bool = False

    def credentials(self, index: int) -> ClientCredentials:
        """TLS client files of routine worker *index*; raises :class:`MalformedError` if absent."""
        broker = BrokerConfig.load(self.broker.config_dir)
        cid = worker_client_id(index)
        try:
            return broker.client(cid)
        except KeyError:
            raise MalformedError(
                f"The broker configuration in {self.broker.config_dir} has no client certificate "
                f"for worker {cid!r} ({self.ingest.workers} workers configured). Run "
                f"`provgw broker-config --pki PKI -o {self.broker.config_dir} "
                f"--routine-workers {self.ingest.workers}` and restart the broker.",
                reason="config-missing-client",
            ) from None


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise MalformedError(f"[{name}] must be a table.", reason="bad-config")
    return value


def _get(table: dict[str, Any], section: str, key: str, kind: type[_T], default: _T | None) -> _T:
    if key not in table:
        if default is None:
            raise MalformedError(
                f"The configuration lacks {section}.{key}; see gateway.example.toml.",
                reason="bad-config",
            )
        return default
    value = table[key]
    # bool is an int in Python: refuse `true` where a number is meant, and the reverse.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedError(
            f"{section}.{key} must be a {kind.__name__}, not {value!r}.", reason="bad-config"
        )
    return value


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _positive(section: str, key: str, value: int, low: int = 1, high: int = 2**31) -> int:
    if not low <= value <= high:
        raise MalformedError(
            f"{section}.{key} must be between {low} and {high}, not {value}.", reason="bad-config"
        )
    return value


def load_config(path: Path) -> GatewayConfig:
    """Read and check *path*; raise :class:`MalformedError` saying what to fix."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MalformedError(
            f"Cannot read the configuration file {path}: {exc.strerror or exc}. Copy "
            "gateway.example.toml and adapt it.",
            reason="config-unreadable",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise MalformedError(f"{path} is not valid TOML: {exc}.", reason="bad-config") from exc
    base = path.resolve().parent
    broker_t, ingest_t = _table(data, "broker"), _table(data, "ingest")
    trust_t, store_t, metrics_t = (
        _table(data, "trust"),
        _table(data, "store"),
        _table(data, "metrics"),
    )

    workers = _get(ingest_t, "ingest", "workers", int, 0) or (os.cpu_count() or 1)
    mode = _get(ingest_t, "ingest", "mode", str, "partitioned")
    if mode not in INGEST_MODES:
        raise MalformedError(
            f"ingest.mode must be one of {', '.join(INGEST_MODES)}, not {mode!r}.",
            reason="bad-config",
        )
    ingest = IngestSettings(
        workers=_positive("ingest", "workers", workers, 1, 64),
        mode=mode,
        batch_max=_positive("ingest", "batch_max", _get(ingest_t, "ingest", "batch_max", int, 500)),
        batch_ms=_positive("ingest", "batch_ms", _get(ingest_t, "ingest", "batch_ms", int, 20)),
        enrol_grace_ms=_positive(
            "ingest", "enrol_grace_ms", _get(ingest_t, "ingest", "enrol_grace_ms", int, 2000), 0
        ),
    )
    broker = BrokerSettings(
        host=_get(broker_t, "broker", "host", str, "127.0.0.1"),
        port=_positive("broker", "port", _get(broker_t, "broker", "port", int, 8883), 1, 65535),
        config_dir=_path(base, _get(broker_t, "broker", "config_dir", str, None)),
        session_expiry_s=_positive(
            "broker",
            "session_expiry_s",
            _get(broker_t, "broker", "session_expiry_s", int, 7 * 24 * 3600),
        ),
        receive_maximum=_positive(
            "broker",
            "receive_maximum",
            _get(broker_t, "broker", "receive_maximum", int, 2 * ingest.batch_max),
            1,
            65535,  # a two-byte integer (MQTT 5 §3.1.2.11.3)
        ),
        share_group=_get(broker_t, "broker", "share_group", str, "provgw"),
    )
    config = GatewayConfig(
        path=path,
        broker=broker,
        ingest=ingest,
        trust_dir=_path(base, _get(trust_t, "trust", "dir", str, None)),
        database=_path(base, _get(store_t, "store", "path", str, None)),
        durable_against_power_loss=_get(
            store_t, "store", "durable_against_power_loss", bool, default=False
        ),
        metrics_host=_get(metrics_t, "metrics", "host", str, "127.0.0.1"),
        metrics_port=_positive("metrics", "port", _get(metrics_t, "metrics", "port", int, 0), 0),
    )
    _check_files(config)
    return config


def _check_files(config: GatewayConfig) -> None:
    if not config.trust_dir.is_dir():
        raise MalformedError(
            f"The trust directory {config.trust_dir} (trust.dir in {config.path}) does not exist. "
            "For a demo, create one with `provgw-sim pki init DIR` and point trust.dir at "
            "DIR/trust; in production, put the manufacturers' root CAs and CRLs there.",
            reason="trust-dir-missing",
        )
    if not (config.broker.config_dir / "broker.json").is_file():
        raise MalformedError(
            f"{config.broker.config_dir} (broker.config_dir in {config.path}) holds no broker "
            "configuration. Write one with `provgw broker-config --pki PKI -o "
            f"{config.broker.config_dir} --routine-workers {config.ingest.workers}`.",
            reason="broker-config-missing",
        )
    for index in range(config.ingest.workers):
        creds = config.credentials(index)
        for file in (creds.cafile, creds.certfile, creds.keyfile):
            if not file.is_file():
                raise MalformedError(
                    f"The TLS file {file} of MQTT client {creds.client_id!r} is missing; re-run "
                    "`provgw broker-config`.",
                    reason="tls-file-missing",
                )
