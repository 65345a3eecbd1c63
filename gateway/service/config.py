"""The gateway's configuration file (TOML, read with :mod:`tomllib`): ``provgw serve --config``.

Documented example: ``gateway.example.toml`` at the repository root. Relative paths are resolved
against the folder of the configuration file, so a site directory can be moved as a whole.

Loading checks what can be checked without touching the network, and says what to do when
something is missing (the trust directory: ``provgw-sim pki init``; the broker's client files:
``provgw broker-config``). A :class:`GatewayConfig` that exists is complete and consistent.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.core.errors import MalformedError, VerificationError
from gateway.core.note import COSIGNATURE_V1, Verifier
from gateway.ingest.broker_config import BrokerConfig, ClientCredentials

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "CHAIN_ENVIRONMENT",
    "DEFAULT_LOG_ORIGIN",
    "DEFAULT_QUARANTINE_PER_DEVICE_HOUR",
    "INGEST_MODES",
    "BrokerSettings",
    "ChainSettings",
    "GatewayConfig",
    "IngestSettings",
    "LogSettings",
    "RemoteWitness",
    "UrgentSettings",
    "WitnessSettings",
    "load_config",
    "worker_client_id",
]

_T = TypeVar("_T")

#: How ingest is laid out (IngestSettings.mode; gateway.service.receiver).
INGEST_MODES = ("partitioned", "shared")

#: Client id (= certificate CN) of routine worker 0; worker *i* > 0 is ``gateway-routine-{i+1}``,
#: as ``provgw broker-config --routine-workers N`` issues them.
_ROUTINE_CLIENT = "gateway-routine"
#: Client id of the urgent lane (gateway.service.urgent.URGENT_CLIENT_ID).
_URGENT_CLIENT = "gateway-urgent"


#: Batches each verifier may hold unacknowledged: one being committed while the next one fills.
_BATCHES_IN_FLIGHT = 2
_DEFAULT_BATCH_MAX = 500


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
    #: Unacknowledged messages the broker may send per verifier (MQTT 5 Receive Maximum; the
    #: receiver announces this times ``ingest.workers``): the bound on what ingest holds in
    #: memory. At least one full batch, so batches can fill; by default two batches
    #: (``2 * ingest.batch_max``: one committing while the next fills), which the loader
    #: computes from the configured ``batch_max`` and this default states for the default one.
    receive_maximum: int = _BATCHES_IN_FLIGHT * _DEFAULT_BATCH_MAX
    #: MQTT 5 shared-subscription group the workers share (§4.8.2), used in ``shared`` mode.
    share_group: str = "provgw"


#: ``[ingest] quarantine_per_device_hour``: a device's refusals kept an hour, with their bytes.
DEFAULT_QUARANTINE_PER_DEVICE_HOUR = 1000


@dataclass(frozen=True)
class IngestSettings:
    """Batching and the ingest processes."""

    #: Verifier processes (``partitioned``) or shared-subscription members (``shared``); each
    #: verifies and commits its own batches.
    workers: int
    #: Ingest layout (see :mod:`gateway.service.receiver`): ``partitioned`` (ONE receiver process
    #: holds the one persistent MQTT session and deals each message to a verifier process by the
    #: hash of its device id; restart-safe on Mosquitto 2.0.11) or ``shared`` (every worker runs
    #: the whole pipeline as a member of one MQTT 5 shared subscription).
    mode: str = "partitioned"
    #: A batch is committed when it holds this many messages ...
    batch_max: int = _DEFAULT_BATCH_MAX
    #: ... or this many milliseconds after its first message arrived, whichever comes first.
    batch_ms: int = 20
    #: ``shared`` mode: a kid-only message from a device another worker is enrolling right now
    #: (its first message, with the certificate chain, went to the other worker) is retried this
    #: long before it is quarantined as ``unknown-kid``. (``partitioned`` keeps a device's
    #: messages in one verifier, in order.)
    enrol_grace_ms: int = 2000
    #: ``partitioned`` mode: MiB of messages the receiver may hold between reading them and their
    #: acknowledgement, all verifiers together. Receive Maximum bounds the COUNT; this bounds the
    #: bytes when devices flood large messages (the broker accepts packets up to
    #: ``max_packet_size``, 8 MiB): past it the receiver stops reading and the broker keeps the
    #: rest. A single larger message is still let through, alone.
    in_flight_mb: int = 32
    #: Refused messages kept in the quarantine, with their bytes, per device and clock hour;
    #: past it a device's refusals are counted (per reason, with their sizes), not kept, so that
    #: one device flooding junk cannot fill the disk. Per ingest process.
    quarantine_per_device_hour: int = DEFAULT_QUARANTINE_PER_DEVICE_HOUR


#: Log origin used when the gateway generates its log key at first start (C2SP tlog-checkpoint:
#: the log's unique name, published in every checkpoint -- never a site or device name).
DEFAULT_LOG_ORIGIN = "provgw.local/log"


@dataclass(frozen=True)
class LogSettings:
    """``[log]``: the transparency log process (batcher) run by ``provgw serve``."""

    #: false: no log process (ingest only); events wait in the store until it is switched on.
    enabled: bool = True
    #: The gateway's Ed25519 log key (C2SP signed-note signer key); generated at first start.
    key: Path = Path("gateway-log.key")
    #: The origin a generated key is named after; an existing key keeps its own name.
    origin: str = DEFAULT_LOG_ORIGIN
    #: Seal a checkpoint every *interval_s* seconds, or as soon as *max_pending* events wait.
    interval_s: float = 2.0
    max_pending: int = 1000


@dataclass(frozen=True)
class RemoteWitness:
    """One ``[[witnesses.remote]]`` entry: a C2SP tlog-witness URL and its cosigning key."""

    url: str
    verifier: Verifier


@dataclass(frozen=True)
class WitnessSettings:
    """``[witnesses]``: who cosigns the gateway's checkpoints, and how many must."""

    #: Run a local witness inside the log process (the embedded default, DESIGN).
    embedded: bool = True
    #: The embedded witness's cosigning key (generated at first start) and its own state file.
    embedded_key: Path = Path("witness.key")
    embedded_db: Path = Path("witness.sqlite3")
    #: Loopback port of the embedded witness (0: any free port).
    embedded_port: int = 0
    remote: tuple[RemoteWitness, ...] = ()
    #: Witnesses that must cosign a checkpoint before it counts as witnessed and is anchored.
    quorum: int = 1
    #: Seconds one round of submissions may take (a dead witness costs at most this).
    timeout_s: float = 5.0

    @property
    def count(self) -> int:
        """How many witnesses are configured (the embedded one included)."""
        return len(self.remote) + int(self.embedded)


@dataclass(frozen=True)
class ChainSettings:
    """``[chain]``: anchoring witnessed checkpoints on the consortium chain (off by default)."""

    enabled: bool = False
    #: JSON-RPC URL of a chain node (Besu); environment override ``PROVGW_CHAIN_URL``.
    rpc_url: str = ""
    #: The ProvenanceAnchor contract (``provgw chain deploy``); ``PROVGW_CHAIN_CONTRACT``.
    contract: str = ""
    #: File holding the gateway's chain account key (hex); ``PROVGW_CHAIN_KEY_FILE``.
    key_file: Path = Path("chain.key")
    #: The chain's name in receipts, e.g. a CAIP-2 id such as ``eip155:2033``.
    name: str = "consortium"
    #: The contract's deployment block (bounds event searches).
    from_block: int = 0
    #: Policy (gateway.service.outbox.AnchorPolicy): anchor once the log grew this much ...
    min_growth: int = 1000
    #: ... or this many seconds after the last anchor; older pending heads are superseded.
    max_interval_s: float = 300.0
    supersede: bool = True
    #: Blocks deep before an anchor counts (1 on QBFT: blocks are final when produced).
    confirmations: int = 1
    #: Longest wait between retries while the node is down (exponential backoff, jitter).
    retry_max_s: float = 60.0
    #: How often a sent transaction is checked.
    poll_s: float = 1.0


@dataclass(frozen=True)
class UrgentSettings:
    """``[urgent]``: the urgent patch lane process (:mod:`gateway.service.urgent`)."""

    #: false: manufacturer manifests and recalls are not received at all.
    enabled: bool = True
    #: The offer-signing key (PEM, Ed25519 or P-256; an Ed25519 one is generated at first start
    #: if missing). None: the gateway's log key (``log.key``), as for checkpoints and receipts.
    offer_key: Path | None = None
    #: The offer key's public half (PEM), written at every start: what devices are provisioned
    #: with (``provgw-sim patch-devices --gateway-key``).
    offer_public_key: Path = Path("offer-key.pub.pem")
    #: Manufacturer firmware keys (``firmware_manifests/trust`` layout) and recall keys. None:
    #: no manufacturer is trusted yet, and every manifest and recall is refused (quarantined).
    manifest_trust: Path | None = None
    recall_trust: Path | None = None
    #: Offer retries (gateway.service.remediation.RetryPolicy): attempt n times out after
    #: ``retry_timeout_s * retry_backoff ** (n - 1)`` s; after ``retry_max_attempts``: unreachable.
    retry_timeout_s: float = 60.0
    retry_max_attempts: int = 3
    retry_backoff: float = 2.0
    #: How often device reports are applied and timed-out offers re-sent.
    tick_s: float = 0.25
    #: Niceness of the lane's process (-20..19; negative needs root or CAP_SYS_NICE, else the
    #: lane runs at normal priority and the start line says so).
    nice: int = -10
    #: Unacknowledged manufacturer messages the broker may send the lane (MQTT 5 Receive Maximum).
    receive_maximum: int = 64


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
    #: The transparency log process, its witnesses and the chain anchor (issue 5).
    log: LogSettings = field(default_factory=LogSettings)
    witnesses: WitnessSettings = field(default_factory=WitnessSettings)
    chain: ChainSettings = field(default_factory=ChainSettings)
    #: The urgent patch lane process (issue 6).
    urgent: UrgentSettings = field(default_factory=UrgentSettings)

    def warnings(self) -> list[dict[str, str]]:
        """List what this valid configuration risks: ``{"reason", "message"}`` each.

        ``provgw serve`` logs each one and reports it in its ``running`` status.
        """
        found = []
        if self.ingest.mode == "shared":
            found.append(
                {
                    "reason": "shared-mode-restart-loss",
                    "message": (
                        'ingest.mode = "shared": after a broker restart Mosquitto 2.0.11 routes '
                        "nothing to a restored shared subscription until its workers subscribe "
                        "again, and drops the device events published in that window although "
                        "the devices got their PUBACK. Use "
                        '"partitioned" (the default) unless your broker keeps shared '
                        "subscriptions across a restart."
                    ),
                }
            )
        return found

    def urgent_credentials(self) -> ClientCredentials:
        """TLS client files of the urgent lane (``gateway-urgent``); :class:`MalformedError`."""
        try:
            return BrokerConfig.load(self.broker.config_dir).client(_URGENT_CLIENT)
        except KeyError:
            raise MalformedError(
                f"The broker configuration in {self.broker.config_dir} has no client certificate "
                f"for the urgent lane ({_URGENT_CLIENT!r}). Re-run `provgw broker-config` and "
                "reload the broker (`systemctl reload mosquitto`, or SIGHUP), or set [urgent] "
                "enabled = false.",
                reason="config-missing-client",
            ) from None

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
                f"--routine-workers {self.ingest.workers}` and reload the broker "
                "(`systemctl reload mosquitto`, or SIGHUP).",
                reason="config-missing-client",
            ) from None


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise MalformedError(f"[{name}] must be a table.", reason="bad-config")
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


class _Section:
    """One ``[table]`` of gateway.toml, read against the dataclass it fills.

    A key left out takes the default of the dataclass field of the same name (or *attribute*), so
    each default is stated once, on the dataclass, and a settings object built in code equals
    one loaded from a file that leaves the keys out. A key whose field has no default, and no
    default given here, is required.
    """

    def __init__(
        self,
        data: dict[str, Any],
        name: str,
        settings: type[DataclassInstance] | None,
        base: Path,
    ) -> None:
        self.name = name
        # A copy: [chain] keys may be overridden from the environment.
        self.table = dict(_table(data, name))
        self._settings = settings
        self._base = base

    def default(self, attribute: str, kind: type[_T]) -> _T:
        """Return the dataclass default of *attribute*; :class:`TypeError` if it has none."""
        value = self._field_default(attribute, kind)
        if value is None:
            msg = f"{self._settings} has no default {kind.__name__} for {attribute}"
            raise TypeError(msg)
        return value

    def _field_default(self, attribute: str, kind: type[_T]) -> _T | None:
        for item in dataclasses.fields(self._settings) if self._settings else ():
            if item.name == attribute and isinstance(item.default, kind):
                return item.default
        return None

    def get(
        self, key: str, kind: type[_T], default: _T | None = None, *, attribute: str | None = None
    ) -> _T:
        """Return *key*, checked to be a *kind*; absent: *default*, else the field's default."""
        if key not in self.table:
            value = self._field_default(attribute or key, kind) if default is None else default
            if value is None:
                raise MalformedError(
                    f"The configuration lacks {self.name}.{key}; see gateway.example.toml.",
                    reason="bad-config",
                )
            return value
        value = self.table[key]
        # bool is an int in Python: refuse `true` where a number is meant, and the reverse.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MalformedError(
                f"{self.name}.{key} must be a {kind.__name__}, not {value!r}.",
                reason="bad-config",
            )
        return value

    def integer(self, key: str, low: int = 1, high: int = 2**31, default: int | None = None) -> int:
        """Return the whole number *key*, between *low* and *high*."""
        return _positive(self.name, key, self.get(key, int, default), low, high)

    def seconds(self, key: str) -> float:
        """Return the number of seconds *key* (0 to 86400; TOML ``2`` and ``2.0`` alike)."""
        value = self.table.get(key, self.default(key, float))
        # TOML writes 2 and 2.0 differently; both are a number of seconds. bool is refused.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 86400:
            raise MalformedError(
                f"{self.name}.{key} must be a number of seconds between 0 and 86400, not "
                f"{value!r}.",
                reason="bad-config",
            )
        return float(value)

    def path(self, key: str, *, attribute: str | None = None) -> Path:
        """Return the path *key*, relative to the configuration file's folder."""
        default = self._field_default(attribute or key, Path)
        return _path(self._base, self.get(key, str, None if default is None else str(default)))

    def optional_path(self, key: str) -> Path | None:
        """Return the path *key*, or None when it is left out or empty."""
        value = self.get(key, str, "")
        return _path(self._base, value) if value else None


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
    ingest = _ingest_settings(_Section(data, "ingest", IngestSettings, base))
    broker_s = _Section(data, "broker", BrokerSettings, base)
    store_s = _Section(data, "store", GatewayConfig, base)
    metrics_s = _Section(data, "metrics", None, base)
    config = GatewayConfig(
        path=path,
        broker=BrokerSettings(
            host=broker_s.get("host", str, "127.0.0.1"),
            port=broker_s.integer("port", 1, 65535, default=8883),
            config_dir=broker_s.path("config_dir"),
            session_expiry_s=broker_s.integer("session_expiry_s"),
            # At most a two-byte integer (MQTT 5 §3.1.2.11.3). By default derived from the
            # configured batch size (BrokerSettings.receive_maximum says why).
            receive_maximum=broker_s.integer(
                "receive_maximum", 1, 65535, default=_BATCHES_IN_FLIGHT * ingest.batch_max
            ),
            share_group=broker_s.get("share_group", str),
        ),
        ingest=ingest,
        trust_dir=_Section(data, "trust", None, base).path("dir"),
        database=store_s.path("path", attribute="database"),
        durable_against_power_loss=store_s.get("durable_against_power_loss", bool),
        metrics_host=metrics_s.get("host", str, "127.0.0.1"),
        metrics_port=metrics_s.integer("port", 0, default=0),
        log=_log_settings(_Section(data, "log", LogSettings, base)),
        witnesses=_witness_settings(_Section(data, "witnesses", WitnessSettings, base)),
        chain=_chain_settings(_Section(data, "chain", ChainSettings, base)),
        urgent=_urgent_settings(_Section(data, "urgent", UrgentSettings, base)),
    )
    _check_ledger(config)
    _check_files(config)
    return config


def _ingest_settings(section: _Section) -> IngestSettings:
    workers = section.get("workers", int, 0) or (os.cpu_count() or 1)
    mode = section.get("mode", str)
    if mode not in INGEST_MODES:
        raise MalformedError(
            f"ingest.mode must be one of {', '.join(INGEST_MODES)}, not {mode!r}.",
            reason="bad-config",
        )
    return IngestSettings(
        workers=_positive("ingest", "workers", workers, 1, 64),
        mode=mode,
        batch_max=section.integer("batch_max"),
        batch_ms=section.integer("batch_ms"),
        enrol_grace_ms=section.integer("enrol_grace_ms", 0),
        in_flight_mb=section.integer("in_flight_mb", 1, 4096),
        quarantine_per_device_hour=section.integer("quarantine_per_device_hour", 1, 10**9),
    )


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
    clients = [config.credentials(index) for index in range(config.ingest.workers)]
    if config.urgent.enabled:
        clients.append(config.urgent_credentials())
        for key in ("manifest_trust", "recall_trust"):
            where = getattr(config.urgent, key)
            if where is not None and not where.is_dir():
                raise MalformedError(
                    f"The directory {where} (urgent.{key} in {config.path}) does not exist. "
                    "Point it at the manufacturers' firmware or recall keys (for the demo: "
                    "firmware_manifests/trust and firmware_manifests/recalls/trust).",
                    reason="trust-dir-missing",
                )
    for creds in clients:
        for file in (creds.cafile, creds.certfile, creds.keyfile):
            if not file.is_file():
                raise MalformedError(
                    f"The TLS file {file} of MQTT client {creds.client_id!r} is missing; re-run "
                    "`provgw broker-config`.",
                    reason="tls-file-missing",
                )


# -- [log], [witnesses], [chain] (the ledger process, gateway.service.ledger_service) -----------

_CONTRACT_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
#: Environment variables that override [chain] keys (docker-compose.yml passes them).
CHAIN_ENVIRONMENT = {
    "PROVGW_CHAIN_URL": "rpc_url",
    "PROVGW_CHAIN_CONTRACT": "contract",
    "PROVGW_CHAIN_KEY_FILE": "key_file",
}


def _http_url(section: str, key: str, url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MalformedError(
            f"{section}.{key} must be an http:// or https:// URL, not {url!r}.",
            reason="bad-config",
        )
    return url


def _log_settings(section: _Section) -> LogSettings:
    interval = section.seconds("interval_s")
    if interval <= 0:
        raise MalformedError("log.interval_s must be above 0.", reason="bad-config")
    return LogSettings(
        enabled=section.get("enabled", bool),
        key=section.path("key"),
        origin=section.get("origin", str),
        interval_s=interval,
        max_pending=section.integer("max_pending"),
    )


def _remote_witness(index: int, item: object) -> RemoteWitness:
    where = f"witnesses.remote[{index}]"
    if not isinstance(item, dict) or set(item) != {"url", "vkey"}:
        raise MalformedError(
            f"{where} must be a table with exactly url and vkey.", reason="bad-config"
        )
    url, vkey = item["url"], item["vkey"]
    if not isinstance(url, str) or not isinstance(vkey, str):
        raise MalformedError(f"{where}.url and .vkey must be strings.", reason="bad-config")
    try:
        verifier = Verifier.from_vkey(vkey.strip())
    except VerificationError as exc:
        raise MalformedError(f"{where}.vkey is not a note key: {exc}", reason="bad-config") from exc
    if verifier.sig_type != COSIGNATURE_V1:
        raise MalformedError(
            f"{where}.vkey is not a witness cosigning key (type 0x04); `provgw witness serve` "
            "prints the right one.",
            reason="bad-config",
        )
    return RemoteWitness(_http_url(where, "url", url), verifier)


def _witness_settings(section: _Section) -> WitnessSettings:
    remote_items = section.table.get("remote", [])
    if not isinstance(remote_items, list):
        raise MalformedError(
            "witnesses.remote must be a list of {url, vkey} tables.", reason="bad-config"
        )
    remote = tuple(_remote_witness(i, item) for i, item in enumerate(remote_items))
    if len({w.verifier.name for w in remote}) != len(remote):
        raise MalformedError("Two remote witnesses share a key name.", reason="bad-config")
    embedded = section.get("embedded", bool)
    count = len(remote) + int(embedded)
    quorum = section.get("quorum", int, min(1, count))
    if not 0 <= quorum <= count:
        raise MalformedError(
            f"witnesses.quorum is {quorum}, but {count} witnesses are configured.",
            reason="bad-config",
        )
    timeout = section.seconds("timeout_s")
    if timeout <= 0:
        raise MalformedError("witnesses.timeout_s must be above 0.", reason="bad-config")
    return WitnessSettings(
        embedded=embedded,
        embedded_key=section.path("embedded_key"),
        embedded_db=section.path("embedded_db"),
        embedded_port=section.integer("embedded_port", 0, 65535),
        remote=remote,
        quorum=quorum,
        timeout_s=timeout,
    )


def _chain_settings(section: _Section) -> ChainSettings:
    for variable, key in CHAIN_ENVIRONMENT.items():
        if os.environ.get(variable):
            section.table[key] = os.environ[variable]
    enabled = section.get("enabled", bool)
    rpc_url = section.get("rpc_url", str)
    contract = section.get("contract", str)
    if enabled:
        _http_url("chain", "rpc_url", rpc_url)
        if not _CONTRACT_ADDRESS.fullmatch(contract):
            raise MalformedError(
                f"chain.contract must be the anchor contract's address (0x and 40 hex digits), "
                f"not {contract!r}; deploy it with `provgw chain deploy --rpc URL --key FILE`.",
                reason="bad-config",
            )
    retry_max = section.seconds("retry_max_s")
    poll = section.seconds("poll_s")
    if retry_max <= 0 or poll <= 0:
        raise MalformedError(
            "chain.retry_max_s and chain.poll_s must be above 0.", reason="bad-config"
        )
    return ChainSettings(
        enabled=enabled,
        rpc_url=rpc_url,
        contract=contract,
        key_file=section.path("key_file"),
        name=section.get("name", str),
        from_block=section.integer("from_block", 0, 2**62),
        min_growth=section.integer("min_growth"),
        max_interval_s=section.seconds("max_interval_s"),
        supersede=section.get("supersede", bool),
        confirmations=section.integer("confirmations", 1, 1000),
        retry_max_s=retry_max,
        poll_s=poll,
    )


def _check_ledger(config: GatewayConfig) -> None:
    chain = config.chain
    if chain.enabled and not chain.key_file.is_file():
        raise MalformedError(
            f"The chain key file {chain.key_file} (chain.key_file in {config.path}) is missing; "
            "put the hex private key of the gateway's chain account there.",
            reason="chain-key-missing",
        )


# -- [urgent] (the urgent lane process, gateway.service.urgent) -----------------------------------


def _urgent_settings(section: _Section) -> UrgentSettings:
    timeout = section.seconds("retry_timeout_s")
    tick = section.seconds("tick_s")
    backoff = section.table.get("retry_backoff", section.default("retry_backoff", float))
    if timeout <= 0 or tick <= 0:
        raise MalformedError(
            "urgent.retry_timeout_s and urgent.tick_s must be above 0.", reason="bad-config"
        )
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not 1 <= backoff <= 10:
        raise MalformedError(
            f"urgent.retry_backoff must be a number from 1 to 10, not {backoff!r}.",
            reason="bad-config",
        )
    return UrgentSettings(
        enabled=section.get("enabled", bool),
        offer_key=section.optional_path("offer_key"),
        offer_public_key=section.path("offer_public_key"),
        manifest_trust=section.optional_path("manifest_trust"),
        recall_trust=section.optional_path("recall_trust"),
        retry_timeout_s=timeout,
        retry_max_attempts=section.integer("retry_max_attempts", 1, 100),
        retry_backoff=float(backoff),
        tick_s=tick,
        nice=section.integer("nice", -20, 19),
        receive_maximum=section.integer("receive_maximum", 1, 65535),
    )
