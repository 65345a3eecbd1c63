"""Fixtures shared across test layers."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    EllipticCurvePrivateKey,
    generate_private_key,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from device_sim.demo import LocalMosquitto
from gateway.ingest.broker_config import BrokerConfig, ClientCredentials, write_broker_config
from gateway.ingest.mqtt import MqttClient
from gateway.store.db import Database

# -- store ----------------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path) -> Iterator[Database]:
    """A fresh gateway database in a real SQLite file, every migration applied."""
    with Database(tmp_path / "gateway.sqlite3") as database:
        yield database


# -- broker (Mosquitto on a random loopback port, TLS with client certificates) -------------------
# A tiny stand-in for `provgw-sim pki init DIR` (device_sim/pki.py), in its layout: two
# manufacturers, one with Ed25519 keys and one with P-256, each root CA -> issuing CA -> devices.

_NOW = dt.datetime.now(dt.UTC)


def _pki_key(kind: str) -> Ed25519PrivateKey | EllipticCurvePrivateKey:
    return Ed25519PrivateKey.generate() if kind == "ed25519" else generate_private_key(SECP256R1())


def _pki_sign(builder, key):
    return builder.sign(key, None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256())


def _pki_cert(cn, key, issuer_cn, issuer_key, *, ca: bool):
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - dt.timedelta(days=1))
        .not_valid_after(_NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return _pki_sign(builder, issuer_key)


def _pki_crl(issuer, issuer_key, revoked_serials, next_update):
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(_NOW - dt.timedelta(days=1))
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(_NOW - dt.timedelta(hours=1))
            .build()
        )
    return _pki_sign(builder, issuer_key)


def _pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


#: (manufacturer slug, key type, device ids, revoked device ids)
PKI_MANUFACTURERS = (
    ("acme", "ed25519", ("09506000134352-A1001", "09506000134352-A1002"), ("09506000134352-R9",)),
    ("globex", "p256", ("04012345000016-G7",), ()),
)


def make_pki(
    root: Path,
    *,
    revoke_issuing: frozenset[str] = frozenset(),
    crl_next_update: dt.datetime | None = None,
) -> Path:
    """Write a demo PKI in the layout of `provgw-sim pki init DIR` and return DIR."""
    next_update = crl_next_update or _NOW + dt.timedelta(days=7)
    devices = []
    for slug, kind, ids, revoked in PKI_MANUFACTURERS:
        root_key, issuing_key = _pki_key(kind), _pki_key(kind)
        root_cert = _pki_cert(f"{slug} root CA", root_key, f"{slug} root CA", root_key, ca=True)
        issuing = _pki_cert(f"{slug} issuing CA", issuing_key, f"{slug} root CA", root_key, ca=True)
        mdir = root / "manufacturers" / slug
        mdir.mkdir(parents=True)
        for name, key, cert in (("root", root_key, root_cert), ("issuing", issuing_key, issuing)):
            (mdir / f"{name}.key.pem").write_bytes(_key_pem(key))
            (mdir / f"{name}.cert.pem").write_bytes(_pem(cert))
        revoked_serials = []
        for device_id in ids + revoked:
            key = _pki_key(kind)
            cert = _pki_cert(device_id, key, f"{slug} issuing CA", issuing_key, ca=False)
            if device_id in revoked:
                revoked_serials.append(cert.serial_number)
            ddir = root / "devices" / device_id
            ddir.mkdir(parents=True)
            (ddir / "key.pem").write_bytes(_key_pem(key))
            (ddir / "cert.pem").write_bytes(_pem(cert))
            (ddir / "chain.pem").write_bytes(_pem(cert) + _pem(issuing))
            devices.append({"id": device_id, "manufacturer": slug, "manufacturer_slug": slug})
        trust = root / "trust"
        trust.mkdir(exist_ok=True)
        (trust / f"{slug}.root.pem").write_bytes(_pem(root_cert))
        root_revoked = [issuing.serial_number] if slug in revoke_issuing else []
        (trust / f"{slug}.root.crl.pem").write_bytes(
            _pem(_pki_crl(root_cert, root_key, root_revoked, next_update))
        )
        (trust / f"{slug}.issuing.crl.pem").write_bytes(
            _pem(_pki_crl(issuing, issuing_key, revoked_serials, next_update))
        )
    (root / "devices.json").write_text(json.dumps(devices), encoding="utf-8")
    return root


@pytest.fixture
def demo_pki():
    """`make_pki(dir, revoke_issuing=..., crl_next_update=...)`: a test's own demo PKI."""
    return make_pki


@dataclass(frozen=True)
class BrokerSetup:
    """The session's PKI and the broker configuration written from it."""

    pki: Path
    config: BrokerConfig

    def client(self, client_id: str) -> ClientCredentials:
        """Credentials of a gateway or manufacturer client (`gateway-routine`, `mfr-acme`)."""
        return self.config.client(client_id)

    def device(self, device_id: str) -> ClientCredentials:
        """A device's credentials: its chain (device + issuing CA), key, and the site CA."""
        ddir = self.pki / "devices" / device_id
        return ClientCredentials(
            device_id, self.config.site_ca, ddir / "chain.pem", ddir / "key.pem"
        )


@pytest.fixture(scope="session")
def broker_config(tmp_path_factory) -> BrokerSetup:
    """A demo PKI and the broker configuration (TLS material, ACL) for the whole session."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    config = write_broker_config(
        pki, tmp_path_factory.mktemp("broker"), now=_NOW, routine_workers=2
    )
    return BrokerSetup(pki, config)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto(LocalMosquitto):
    """A real Mosquitto on a random loopback port (the demo's `LocalMosquitto`, which users run).

    `restart()` keeps its port and persistence directory; `client()` / `device()` make adapters.
    """

    def __init__(self, setup: BrokerSetup, workdir: Path) -> None:
        super().__init__(setup.config, workdir, port=_free_port())
        self.setup = setup

    def client(self, client_id: str, **kwargs) -> MqttClient:
        """An (unconnected) adapter for a gateway or manufacturer identity on this broker."""
        return MqttClient(self.setup.client(client_id), host=self.host, port=self.port, **kwargs)

    def device(self, device_id: str, **kwargs) -> MqttClient:
        """An (unconnected) adapter for a device identity on this broker."""
        return MqttClient(self.setup.device(device_id), host=self.host, port=self.port, **kwargs)


@pytest.fixture
def start_mosquitto(tmp_path) -> Iterator[Callable[[Path, BrokerConfig], Mosquitto]]:
    """`start(pki_dir, config)`: a Mosquitto for any written config; all stopped after the test."""
    started: list[Mosquitto] = []

    def start(pki: Path, config: BrokerConfig) -> Mosquitto:
        workdir = tmp_path / f"mosquitto-{len(started)}"
        workdir.mkdir()
        broker = Mosquitto(BrokerSetup(pki, config), workdir)
        started.append(broker)
        broker.start()
        return broker

    try:
        yield start
    finally:
        for broker in started:
            broker.stop()


@pytest.fixture
def mosquitto(broker_config, start_mosquitto) -> Mosquitto:
    """A running Mosquitto with the session's configuration; stopped (never left behind) after."""
    return start_mosquitto(broker_config.pki, broker_config.config)


# -- ingest service: a device_sim site, `provgw serve` subprocesses, PUBACK-counting devices -----


@dataclass(frozen=True)
class GatewaySite:
    """A `provgw-sim pki init` PKI (real device identities) and its broker configuration."""

    pki: Path
    config: BrokerConfig
    devices: tuple[str, ...]


@pytest.fixture(scope="session")
def gateway_site(tmp_path_factory) -> GatewaySite:
    """One demo site per session: 9 trusted devices, broker config for 2 routine workers."""
    from device_sim.pki import init_pki  # noqa: PLC0415 - only the ingest tests need it

    pki = tmp_path_factory.mktemp("site") / "pki"
    records = init_pki(pki, devices_per_model=1)
    config = write_broker_config(
        pki, tmp_path_factory.mktemp("site-broker"), now=_NOW, routine_workers=2
    )
    return GatewaySite(pki, config, tuple(r.id for r in records))


@pytest.fixture
def site_broker(gateway_site, start_mosquitto) -> Mosquitto:
    """A running Mosquitto for `gateway_site` (correct ACL), stopped after the test."""
    return start_mosquitto(gateway_site.pki, gateway_site.config)


class ServeProcess:
    """`provgw serve --config FILE --json` as a real subprocess in its own process group."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.proc: subprocess.Popen[str] | None = None
        self.status: dict = {}

    def start(self) -> dict:
        exe = Path(sys.executable).with_name("provgw")
        with self.log_path.open("a") as err:
            self.proc = subprocess.Popen(
                [str(exe), "serve", "--config", str(self.config), "--json"],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        # The start line (or a failure line); pytest-timeout bounds a hang here.
        line = self.proc.stdout.readline()
        if not line:
            self.kill9()
            pytest.fail(f"provgw serve did not start:\n{self.log()}")
        self.status = json.loads(line)
        return self.status

    def stop(self, timeout: float = 20.0, *, group: bool = False) -> dict:
        """SIGTERM to the supervisor (or, *group*, to every process); return the JSON stop line."""
        assert self.proc is not None
        if group:
            os.killpg(self.proc.pid, signal.SIGTERM)
        else:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        self.proc = None
        return json.loads(out.strip().splitlines()[-1])

    def kill9(self) -> None:
        """SIGKILL the whole process group: supervisor and every worker die at once."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.wait_exit()

    def wait_exit(self, timeout: float = 20.0) -> int:
        """Wait for the process to end by itself; return its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def serve_gateway(tmp_path) -> Iterator[Callable[..., ServeProcess]]:
    """`serve_gateway(site, broker, workers=2, metrics_port=0)`: write gateway.toml, start serve.

    *broker_extra*, *ingest_extra*: more `key = value` lines for the `[broker]` and `[ingest]`
    tables, each ending in a newline.

    Every gateway still running after the test is killed.
    """
    started: list[ServeProcess] = []

    def start(  # noqa: PLR0913 - the test's knobs, keyword-only and defaulted
        site: GatewaySite,
        broker: Mosquitto,
        *,
        workers=2,
        metrics_port=0,
        start=True,
        broker_extra="",
        ingest_extra="",
    ):
        conf = tmp_path / "gateway.toml"
        conf.write_text(
            f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'config_dir = "{site.config.directory}"\n{broker_extra}'
            f'[trust]\ndir = "{site.pki / "trust"}"\n'
            f'[store]\npath = "{tmp_path / "gateway.sqlite3"}"\n'
            f"[ingest]\nworkers = {workers}\n{ingest_extra}"
            f'[metrics]\nhost = "127.0.0.1"\nport = {metrics_port}\n',
            encoding="utf-8",
        )
        serve = ServeProcess(conf, tmp_path / f"serve-{len(started)}.log")
        started.append(serve)
        if start:
            serve.start()
        return serve

    try:
        yield start
    finally:
        for serve in started:
            serve.kill9()


# -- a real local chain node ----------------------------------------------------------------------

GANACHE = Path(__file__).resolve().parents[1] / "contracts" / "node_modules" / ".bin" / "ganache"


class Ganache:
    """A ganache node on a random loopback port, restartable on the same chain database."""

    def __init__(self, db_path: Path, key: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_path = db_path
        self.key = key  # 0x-prefixed hex of the funded account's private key
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from web3 import Web3  # noqa: PLC0415 - only the chain tests pay for importing web3

        assert GANACHE.exists(), "ganache is missing: run `make node-deps`"
        args = [
            str(GANACHE),
            "--server.host=127.0.0.1",
            f"--server.port={self.port}",
            "--chain.hardfork=london",  # the fork of our Besu genesis (no PUSH0)
            "--chain.chainId=1337",
            f"--database.dbPath={self.db_path}",
            f"--wallet.accounts={self.key},0x3635C9ADC5DEA00000",
            "--logging.quiet",
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        probe = Web3(Web3.HTTPProvider(self.url, exception_retry_configuration=None))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if probe.is_connected():
                return
            time.sleep(0.1)
        self.kill()
        pytest.fail("ganache did not start within 60 s")

    def kill(self) -> None:
        """SIGKILL the node's process group: a crash, or an unplugged validator."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def ganache(tmp_path) -> Iterator[Ganache]:
    """A started ganache node with one funded account (``.key``); killed after the test."""
    node = Ganache(tmp_path / "chain", "0x" + os.urandom(32).hex())
    node.start()
    yield node
    node.kill()
