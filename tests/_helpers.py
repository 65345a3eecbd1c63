"""Helpers shared by test modules: ``from tests._helpers import Inbox``.

Tests are not a package (pytest runs with ``--import-mode=importlib``); the repository root is on
``sys.path`` (the editable install), so ``tests`` imports as a namespace package.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from gateway.core import cose
from gateway.core.merkle import (
    consistency_proof,
    leaf_hash,
    root_from_leaf_hashes,
    subtree_from_leaf_hashes,
)
from gateway.core.note import Checkpoint, Signer
from gateway.ingest.broker_config import ClientCredentials
from gateway.ledger.witness import AddCheckpointRequest
from gateway.store.db import Database

__all__ = [
    "Inbox",
    "ToyLog",
    "cose_signed",
    "logged",
    "outside_vectors",
    "self_signed_credentials",
    "stored_count",
]

Delivery = tuple[str, bytes, int, int, dict]


class Inbox:
    """An MQTT ``on_message`` callback that collects deliveries for a test to wait on.

    Fits :class:`gateway.ingest.mqtt.MqttClient` and :class:`gateway.ingest.lean.LeanSubscriber`
    alike (``topic, payload, tag, qos, properties``). Each delivery is queued for :meth:`get` /
    :meth:`take` (returned once) and kept in :attr:`messages` as ``(topic, payload)`` for
    :meth:`wait_for`. With :attr:`client` set, each delivery is acknowledged at once.
    """

    def __init__(self, client: Any = None) -> None:
        self.q: queue.Queue[Delivery] = queue.Queue()
        self.messages: list[tuple[str, bytes]] = []
        self.client = client
        self._changed = threading.Condition()

    def __call__(self, topic: str, payload: bytes, tag: int, qos: int, properties: dict) -> None:
        with self._changed:
            self.messages.append((topic, payload))
            self._changed.notify_all()
        self.q.put((topic, payload, tag, qos, properties))
        if self.client is not None:
            self.client.ack(tag, qos)

    def get(self, timeout: float = 3.0) -> Delivery:
        """Return the next delivery, waiting up to *timeout* seconds (``queue.Empty`` if none)."""
        return self.q.get(timeout=timeout)

    def take(self, n: int, timeout: float = 5.0) -> list[Delivery]:
        """Return the next *n* deliveries, waiting up to *timeout* seconds for each."""
        return [self.q.get(timeout=timeout) for _ in range(n)]

    def nothing_within(self, seconds: float) -> bool:
        """Return True when no delivery arrives within *seconds*."""
        try:
            self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Wait until *count* deliveries arrived in all; return every ``(topic, payload)``."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


def self_signed_credentials(client_id: str, cafile: Path, folder: Path) -> ClientCredentials:
    """MQTT credentials for *client_id* whose certificate is self-signed: no CA the broker knows.

    The CN is a real client's, so only the issuer can be the reason the broker refuses it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client_id)])
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (folder / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ClientCredentials(client_id, cafile, folder / "c.pem", folder / "k.pem")


class ToyLog:
    """An in-memory RFC 9162 log that signs checkpoints; ``fork`` rewrites one entry."""

    def __init__(self, signer: Signer, size: int = 0, salt: bytes = b"") -> None:
        self.signer = signer
        self.salt = salt
        self.leaves: list[bytes] = []
        self.grow(size)

    def grow(self, n: int) -> ToyLog:
        start = len(self.leaves)
        self.leaves += [leaf_hash(self.salt + str(i).encode()) for i in range(start, start + n)]
        return self

    def fork(self, index: int) -> ToyLog:
        other = ToyLog(self.signer)
        other.leaves = list(self.leaves)
        other.leaves[index] = leaf_hash(b"rewritten history")
        return other

    def root(self, size: int | None = None) -> bytes:
        return root_from_leaf_hashes(self.leaves[: len(self.leaves) if size is None else size])

    def checkpoint(self, size: int | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        return Checkpoint(self.signer.name, size, self.root(size)).sign(self.signer)

    def prove(self, old: int, new: int | None = None) -> list[bytes]:
        new = len(self.leaves) if new is None else new
        return consistency_proof(old, new, subtree_from_leaf_hashes(self.leaves))

    def request(self, old: int, size: int | None = None) -> bytes:
        proof = self.prove(old, size)
        return AddCheckpointRequest(old, tuple(proof), self.checkpoint(size)).to_bytes()


def stored_count(db_path: Path) -> int:
    """Events in a gateway database, read from outside; 0 before its tables exist."""
    try:
        with sqlite3.connect(db_path) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def outside_vectors(name: str) -> Path:
    """The folder *name* of the outside test vectors (COSE, Merkle, SBOMs, signed notes).

    They live beside the checkout (``<root>/shared/testvectors``, the layout CI clones into) or
    wherever ``PROVGW_TESTVECTORS`` points. Missing, this fails loudly, never skips: a green run
    without them would hold the code against nothing.
    """
    root = os.environ.get("PROVGW_TESTVECTORS")
    base = Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "testvectors"
    folder = base / name
    if not folder.is_dir():
        msg = (
            f"The outside test vectors are missing: {folder} does not exist. Clone the project "
            "beside its shared/ folder (<root>/main and <root>/shared/testvectors), or point "
            "PROVGW_TESTVECTORS at a copy of testvectors/."
        )
        raise FileNotFoundError(msg)
    return folder


_TEST_DEVICE_KEY = ed25519.Ed25519PrivateKey.generate()


def cose_signed(payload: bytes) -> bytes:
    """*payload* as a device's COSE_Sign1 (a throwaway Ed25519 key, kid ``test``): what the events
    table keeps as ``raw``, for tests that store events without running the ingest pipeline."""
    return cose.sign1(payload, _TEST_DEVICE_KEY, kid=b"test")


def logged(read: Callable[[], str], text: str, timeout: float = 5.0) -> bool:
    """Whether *text* shows up in the log *read()* returns within *timeout* seconds.

    A broker or gateway writes its log line a moment after the client has seen the event (a
    refused handshake, a restart): reading the log once, at once, is a race.
    """
    deadline = time.monotonic() + timeout
    while text not in read():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


#: The systemd unit users install (README, "Running as a service").
SERVICE_UNIT = Path(__file__).resolve().parents[1] / "deploy" / "provgw.service"


def unit_settings(unit: Path = SERVICE_UNIT) -> dict[str, list[str]]:
    """A systemd unit's ``Key=value`` lines: every value of each key, in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def alive(pid: int, *, group: bool = False) -> bool:
    """Whether process *pid* (or, *group*, any process of process group *pid*) still exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    return True


def enrol_demo_devices(db: Database, pki: Path, device_ids: list[str], now: dt.datetime) -> None:
    """Enrol devices of a `provgw-sim pki init` folder in *db*, as first contact would."""
    from device_sim.events import SimDevice  # noqa: PLC0415 - only these tests load the sim
    from gateway.core.identity import verify_device_chain  # noqa: PLC0415
    from gateway.store.devices import DeviceStore  # noqa: PLC0415
    from gateway.store.trust_files import load_trust_dir  # noqa: PLC0415

    trust = load_trust_dir(pki / "trust")
    for device_id in device_ids:
        chain = list(SimDevice.load(pki, device_id).chain)
        identity = verify_device_chain(chain, trust, now)
        DeviceStore(db).enrol(
            device_id=device_id,
            manufacturer=identity.manufacturer,
            kid=identity.kid,
            cert=chain[0],
            chain=chain[1:],
            now_ms=int(now.timestamp() * 1000),
        )


def revoked_devices_db(path: Path, *devices: str) -> Path:
    """A gateway database at *path* with *devices* enrolled and revoked, and ``kept`` enrolled.

    Placeholder certificates: for what reads the devices table, not for chain checks.
    """
    from gateway.store.devices import DeviceStore  # noqa: PLC0415

    with Database(path) as db:
        store = DeviceStore(db)
        for n, device in enumerate(devices):
            store.enrol(
                device_id=device, manufacturer="acme", kid=b"k%d" % n, cert=b"c", chain=[], now_ms=1
            )
        store.enrol(
            device_id="kept", manufacturer="acme", kid=b"kept", cert=b"c", chain=[], now_ms=1
        )
        for device in devices:
            store.revoke(device, now_ms=2)
    return path


def invoke_cli(*args: object) -> Any:
    """Run ``provgw ARGS`` in-process (click's runner), every argument as text."""
    from click.testing import CliRunner  # noqa: PLC0415

    from gateway.views.cli._main import _register, cli  # noqa: PLC0415

    _register()
    return CliRunner().invoke(cli, [str(a) for a in args])
