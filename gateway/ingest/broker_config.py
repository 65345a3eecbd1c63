"""Mosquitto configuration for a gateway site: TLS material, ``mosquitto.conf`` and the ACL.

:func:`write_broker_config` reads a demo/production PKI directory (layout of
``provgw-sim pki init DIR``)::

    DIR/trust/<mfr>.root.pem, <mfr>.root.crl.pem, <mfr>.issuing.crl.pem
    DIR/manufacturers/<mfr>/issuing.cert.pem      (or DIR/trust/<mfr>.issuing.pem; keys never read)

and writes into OUTDIR::

    mosquitto.conf, acl, broker.json      broker.json: what was written, for the service
    tls/site-ca.{key,cert,crl}.pem        the site CA (kept across runs: devices trust it)
    tls/server.{key,cert}.pem             the broker's certificate (SAN IP and DNS)
    tls/ca-bundle.pem                     site CA + every manufacturer root and issuing CA
    tls/crl-bundle.pem                    site CA CRL + every manufacturer CRL
    clients/<client-id>/{key,cert}.pem    gateway-* and mfr-<slug> (CN = client id)
    data/                                 Mosquitto persistence (queued QoS 1 messages)

Checks before anything is written, each against a named threat:

1. every manufacturer's issuing CA is signed by its root in ``trust/`` (a substituted CA would let
   its holder mint device identities);
2. every CRL is signed by the CA it speaks for and is not past its nextUpdate (a forged CRL could
   hide revocations; an expired one makes OpenSSL refuse *every* client of that CA);
3. a manufacturer whose issuing CA its root's CRL revokes is left out of the CA bundle, root
   and all: Mosquitto 2.0.11 has OpenSSL check the CRL of the leaf certificate only
   (``X509_V_FLAG_CRL_CHECK``, not ``CRL_CHECK_ALL``), so a revoked intermediate still admits its
   devices; and since devices present their issuing CA in the handshake (chain.pem), dropping
   only the intermediate is not enough either (both measured against the real broker). The
   layout has one issuing CA per manufacturer, so no device in good standing is shut out.

Mosquitto takes a single ``crlfile``; OpenSSL's ``X509_load_crl_file`` loads every CRL in a PEM
file, so the bundle concatenates them (pinned by a test against the real broker). With a CRL file
configured, a leaf whose issuer has no CRL is refused, hence the site CA's own (empty) CRL.

Devices the gateway revoked (``provgw device revoke``) hold certificates their manufacturer has
not revoked, so the TLS checks still admit them. :func:`deny_devices` writes the ACL again with a
``topic deny #`` for each (``provgw broker-acl``): Mosquitto re-reads the ACL on SIGHUP and then
refuses every publish of theirs, their open connections included (measured against the real
broker), with no restart and no new certificates. The list is kept in ``broker.json``, so a
later ``provgw broker-config`` keeps refusing them: a revocation is not undone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.core.errors import (
    ExpiredError,
    MalformedError,
    SignatureError,
    UntrustedSignerError,
)

__all__ = [
    "GATEWAY_CLIENTS",
    "BrokerConfig",
    "BrokerLimits",
    "ClientCredentials",
    "deny_devices",
    "render_acl",
    "write_broker_config",
]

#: The gateway's own MQTT identities (certificate CN = username = client id). Routine and urgent
#: traffic use separate client ids so a routine flood cannot fill the urgent lane's queue
#: (DESIGN.md "Measured here").
GATEWAY_CLIENTS = ("gateway-admin", "gateway-routine", "gateway-urgent")

_SITE_CA_DAYS = 3650
_LEAF_DAYS = 730
_SITE_CRL_DAYS = 365
_SKEW = dt.timedelta(minutes=5)  # certificates start a little in the past: clocks disagree


@dataclass(frozen=True)
class BrokerLimits:
    """Queue, in-flight and size limits written to ``mosquitto.conf``.

    ``max_queued_messages``: Mosquitto's default (1000) drops QoS 1 messages for a client that
    falls behind while the publisher still gets its PUBACK (measured, DESIGN.md). In 2.0 the limit
    is global, not per client, so it is set high for everyone; devices queue almost nothing (a few
    firmware offers), and the gateway's backlog is what must never be dropped. At 1,000,000
    messages of ~1 KiB a stalled gateway costs the broker about 1 GiB: size the host for it.

    ``max_inflight_messages``: for MQTT 5 clients Mosquitto sends this as Receive Maximum in
    CONNACK (how many unacknowledged QoS 1 publishes a device may have towards the broker, MQTT 5
    §3.2.2.3.3). Towards the gateway the gateway's own Receive Maximum bounds it (see
    :mod:`gateway.ingest.mqtt`).

    ``autosave_interval``: Mosquitto writes its persistence file on clean shutdown and every this
    many seconds. A broker *crash* loses at most this window of queued messages that publishers
    already saw acknowledged.
    """

    max_inflight_messages: int = 100
    max_queued_messages: int = 1_000_000
    #: Largest MQTT packet accepted (a manifest with a 2,000-component SBOM is ~2 MB).
    max_packet_size: int = 8 * 1024 * 1024
    #: Sessions of clients gone longer than this are discarded (devices scrapped, not removed).
    persistent_client_expiration: str = "14d"
    autosave_interval: int = 30


@dataclass(frozen=True)
class ClientCredentials:
    """What one MQTT client needs to connect: its certificate and key, and the CA of the broker."""

    client_id: str
    cafile: Path
    certfile: Path
    keyfile: Path


@dataclass(frozen=True)
class BrokerConfig:
    """A written broker configuration: where every file is, and what it admits."""

    directory: Path
    host: str
    port: int
    limits: BrokerLimits
    manufacturers: tuple[str, ...]
    #: Manufacturers whose issuing CA their root has revoked: left out of the CA bundle (their
    #: devices cannot connect until the manufacturer issues a new issuing CA).
    revoked_issuers: tuple[str, ...]
    #: The earliest nextUpdate among the CRLs: regenerate and reload the broker before it.
    crl_next_update: dt.datetime
    clients: dict[str, ClientCredentials] = field(default_factory=dict)
    #: Devices the ACL refuses everything (revoked by the gateway, :func:`deny_devices`).
    denied_devices: tuple[str, ...] = ()

    @property
    def conf(self) -> Path:
        """``mosquitto.conf``."""
        return self.directory / "mosquitto.conf"

    @property
    def acl(self) -> Path:
        """The ACL file."""
        return self.directory / "acl"

    @property
    def cafile(self) -> Path:
        """CA bundle the broker verifies client certificates against."""
        return self.directory / "tls" / "ca-bundle.pem"

    @property
    def crlfile(self) -> Path:
        """Every CRL, concatenated (Mosquitto takes one file)."""
        return self.directory / "tls" / "crl-bundle.pem"

    @property
    def site_ca(self) -> Path:
        """The site CA certificate: clients verify the broker with it."""
        return self.directory / "tls" / "site-ca.cert.pem"

    @property
    def certfile(self) -> Path:
        """The broker's server certificate."""
        return self.directory / "tls" / "server.cert.pem"

    @property
    def keyfile(self) -> Path:
        """The broker's server key."""
        return self.directory / "tls" / "server.key.pem"

    @property
    def persistence_dir(self) -> Path:
        """Where Mosquitto keeps sessions and queued messages."""
        return self.directory / "data"

    def client(self, client_id: str) -> ClientCredentials:
        """Credentials of *client_id*, or :class:`KeyError` naming the ones that exist."""
        try:
            return self.clients[client_id]
        except KeyError:
            raise KeyError(
                f"no client {client_id!r} in {self.directory}; have {sorted(self.clients)}"
            ) from None

    def mosquitto_conf(
        self,
        *,
        port: int | None = None,
        persistence_dir: Path | None = None,
        run_as: str | None = None,
    ) -> str:
        """Render ``mosquitto.conf``; *port* and *persistence_dir* override the written ones.

        *run_as* names the user Mosquitto keeps when started as root (it otherwise switches to
        ``mosquitto``, which may not read these files).
        """
        data = persistence_dir or self.persistence_dir
        lim = self.limits
        lines = [
            "# Written by `provgw broker-config`; regenerate rather than edit.",
            "per_listener_settings false",
            "",
            "# Every client authenticates with a certificate; its CN becomes its username AND its",
            "# client id, so a device cannot take over another client's session by picking its id.",
            f"listener {port or self.port} {self.host}",
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"crlfile {self.crlfile}",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "allow_anonymous false",
            f"acl_file {self.acl}",
            "set_tcp_nodelay true",
            "",
            "# Queued QoS 1 messages and sessions survive a broker restart.",
            "persistence true",
            f"persistence_location {data}/",
            f"autosave_interval {lim.autosave_interval}",
            f"persistent_client_expiration {lim.persistent_client_expiration}",
            "",
            "# Default max_queued_messages (1000) silently drops messages for a client that falls",
            "# behind while the publisher still gets PUBACK; in 2.0 it is global, so it is high.",
            f"max_queued_messages {lim.max_queued_messages}",
            "max_queued_bytes 0",
            f"max_inflight_messages {lim.max_inflight_messages}",
            f"max_packet_size {lim.max_packet_size}",
            "queue_qos0_messages false",
            "",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if run_as:
            lines.append(f"user {run_as}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        """Summarise as JSON-ready data (also what ``broker.json`` holds)."""
        return {
            "directory": str(self.directory),
            "host": self.host,
            "port": self.port,
            "conf": str(self.conf),
            "acl": str(self.acl),
            "cafile": str(self.cafile),
            "crlfile": str(self.crlfile),
            "site_ca": str(self.site_ca),
            "manufacturers": list(self.manufacturers),
            "revoked_issuers": list(self.revoked_issuers),
            "denied_devices": list(self.denied_devices),
            "crl_next_update": self.crl_next_update.isoformat(),
            "limits": {
                "max_inflight_messages": self.limits.max_inflight_messages,
                "max_queued_messages": self.limits.max_queued_messages,
                "max_packet_size": self.limits.max_packet_size,
                "persistent_client_expiration": self.limits.persistent_client_expiration,
                "autosave_interval": self.limits.autosave_interval,
            },
            "clients": {
                cid: {
                    "certfile": str(c.certfile),
                    "keyfile": str(c.keyfile),
                    "cafile": str(c.cafile),
                }
                for cid, c in sorted(self.clients.items())
            },
        }

    @classmethod
    def load(cls, directory: Path) -> BrokerConfig:
        """Read back what :func:`write_broker_config` wrote into *directory*."""
        path = directory / "broker.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                directory=directory,
                host=data["host"],
                port=int(data["port"]),
                limits=BrokerLimits(**data["limits"]),
                manufacturers=tuple(data["manufacturers"]),
                revoked_issuers=tuple(data["revoked_issuers"]),
                crl_next_update=dt.datetime.fromisoformat(data["crl_next_update"]),
                clients={
                    cid: ClientCredentials(
                        cid, Path(c["cafile"]), Path(c["certfile"]), Path(c["keyfile"])
                    )
                    for cid, c in data["clients"].items()
                },
                # Absent from files written before the gateway could deny devices.
                denied_devices=tuple(data.get("denied_devices", ())),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MalformedError(
                f"{path} is not a broker configuration written by `provgw broker-config` ({exc}).",
                reason="bad-broker-config",
            ) from exc


#: What a username in the ACL may be: a line holds ``user NAME``, so no space, newline or ``#``.
_ACL_USERNAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def render_acl(
    gateway_clients: tuple[str, ...],
    manufacturers: tuple[str, ...],
    denied_devices: tuple[str, ...] = (),
) -> str:
    """Render the Mosquitto ACL: devices own their topics, the gateway reads, manufacturers write.

    Usernames are certificate CNs (``use_identity_as_username``); ``%u`` is the device id.
    Anything not granted here is denied; *denied_devices* are refused even what the device
    patterns grant (Mosquitto applies ``deny`` before any grant). Raises :class:`MalformedError`
    for a device id that cannot be written as an ACL username (it would change the file's rules).
    """
    lines = [
        "# Written by `provgw broker-config`; regenerate rather than edit.",
        "# Devices (username = certificate CN = device id): publish their own events only,",
        "# read their own command topic only, at any site.",
        "pattern write provgw/v1/+/dev/%u/evt/#",
        "pattern read provgw/v1/+/dev/%u/cmd",
        "",
    ]
    for client in gateway_clients:
        lines += [
            f"user {client}",
            "topic read provgw/v1/+/dev/+/evt/#",
            "topic read provgw/v1/mfr/#",
            "topic write provgw/v1/+/dev/+/cmd",
            "",
        ]
    for slug in manufacturers:
        lines += [f"user mfr-{slug}", f"topic write provgw/v1/mfr/{slug}/#", ""]
    if denied_devices:
        lines.append("# Revoked by the gateway (`provgw device revoke`, `provgw broker-acl`).")
    for device_id in denied_devices:
        if not _ACL_USERNAME.fullmatch(device_id):
            raise MalformedError(
                f"Device id {device_id!r} cannot be written into a Mosquitto ACL.",
                reason="bad-device-id",
            )
        lines += [f"user {device_id}", "topic deny #", ""]
    return "\n".join(lines)


def deny_devices(
    directory: Path, device_ids: Iterable[str]
) -> tuple[BrokerConfig, tuple[str, ...]]:
    """Refuse *device_ids* everything at the broker written into *directory*.

    Writes the ACL and ``broker.json`` again, with the devices denied before kept denied (the
    list only grows). Returns the new configuration and the devices denied for the first time.
    Mosquitto applies it on its next SIGHUP (``systemctl reload mosquitto``); nothing else of
    the broker's configuration changes.
    """
    directory = directory.resolve()  # broker.json holds absolute paths, as broker-config wrote
    config = BrokerConfig.load(directory)
    new = tuple(sorted(set(device_ids) - set(config.denied_devices)))
    denied = tuple(sorted({*config.denied_devices, *new}))
    acl = render_acl(_gateway_clients(config), config.manufacturers, denied)  # checks the ids
    config = dataclasses.replace(config, denied_devices=denied)
    _write(config.acl, acl.encode())
    _write(directory / "broker.json", _config_json(config))
    return config, new


def _denied_before(outdir: Path) -> tuple[str, ...]:
    """Return the devices a configuration already in *outdir* denies (kept: never dropped)."""
    if not (outdir / "broker.json").exists():
        return ()
    try:
        return BrokerConfig.load(outdir).denied_devices
    except MalformedError as err:
        # Never start afresh silently: the revoked devices it denies would be let in again.
        raise MalformedError(
            f"{err} Move it away to write a fresh configuration, then run `provgw broker-acl` "
            "to deny the revoked devices again.",
            reason=err.reason,
        ) from err


def _gateway_clients(config: BrokerConfig) -> tuple[str, ...]:
    return tuple(sorted(cid for cid in config.clients if not cid.startswith("mfr-")))


def _config_json(config: BrokerConfig) -> bytes:
    return json.dumps(config.to_json(), indent=2, sort_keys=True).encode()


# --- reading the PKI -------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MalformedError(
            f"The PKI directory lacks the {what} ({path}): {exc.strerror}.", reason="pki-incomplete"
        ) from exc


def _cert(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError as exc:
        raise MalformedError(f"The {what} ({path}) is not a PEM certificate.") from exc


def _crl(
    path: Path, issuer: x509.Certificate, now: dt.datetime, what: str
) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_pem_x509_crl(_read(path, what))
    except ValueError as exc:
        raise MalformedError(f"The {what} ({path}) is not a PEM CRL.") from exc
    # Step 2: signed by the CA it speaks for (a forged CRL would hide revocations).
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise SignatureError(
            f"The {what} ({path}) is not signed by {issuer.subject.rfc4514_string()}.",
            reason="bad-crl-signature",
        )
    # Step 2: not expired (OpenSSL would then refuse every client certificate of this CA).
    next_update = crl.next_update_utc
    if next_update is None or next_update <= now:
        raise ExpiredError(
            f"The {what} ({path}) expired at {next_update}; the manufacturer must issue a fresh "
            "one, or the broker would refuse every device of that manufacturer.",
            reason="crl-expired",
        )
    return crl


@dataclass(frozen=True)
class _Manufacturer:
    slug: str
    root: x509.Certificate
    issuing: x509.Certificate
    crls: tuple[x509.CertificateRevocationList, ...]
    issuing_revoked: bool


def _manufacturer(pki: Path, slug: str, now: dt.datetime) -> _Manufacturer:
    trust = pki / "trust"
    root = _cert(trust / f"{slug}.root.pem", f"{slug} root CA certificate")
    issuing_path = trust / f"{slug}.issuing.pem"
    if not issuing_path.exists():
        issuing_path = pki / "manufacturers" / slug / "issuing.cert.pem"
    issuing = _cert(issuing_path, f"{slug} issuing CA certificate")
    # Step 1: the issuing CA chains to the trusted root (else anyone could mint device identities).
    try:
        issuing.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise UntrustedSignerError(
            f"The issuing CA of manufacturer {slug!r} ({issuing_path}) is not signed by its root "
            f"CA in {trust}.",
            reason="issuing-ca-untrusted",
        ) from exc
    for cert, name in ((root, "root"), (issuing, "issuing")):
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise ExpiredError(
                f"The {name} CA certificate of manufacturer {slug!r} is valid only from "
                f"{cert.not_valid_before_utc} to {cert.not_valid_after_utc}.",
                reason="ca-expired",
            )
    root_crl = _crl(trust / f"{slug}.root.crl.pem", root, now, f"{slug} root CRL")
    issuing_crl = _crl(trust / f"{slug}.issuing.crl.pem", issuing, now, f"{slug} issuing CRL")
    # Step 3: Mosquitto's CRL check covers the leaf only, so a revoked intermediate is dropped.
    revoked = root_crl.get_revoked_certificate_by_serial_number(issuing.serial_number) is not None
    return _Manufacturer(slug, root, issuing, (root_crl, issuing_crl), revoked)


def _manufacturer_slugs(pki: Path) -> tuple[str, ...]:
    suffix = ".root.pem"
    slugs = sorted(p.name[: -len(suffix)] for p in (pki / "trust").glob(f"*{suffix}"))
    if not slugs:
        raise MalformedError(
            f"{pki / 'trust'} holds no manufacturer root (<mfr>.root.pem); is {pki} a PKI "
            "directory made by `provgw-sim pki init`?",
            reason="pki-incomplete",
        )
    for slug in slugs:
        # The slug becomes a certificate CN, a username and an ACL topic level.
        if not slug or any(c in slug for c in "/+#\x00 \t\n") or slug.startswith("$"):
            raise MalformedError(
                f"Manufacturer name {slug!r} cannot be used in an MQTT topic.", reason="bad-slug"
            )
    return tuple(slugs)


# --- issuing the site's own certificates -----------------------------------------------------


def _pem(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    # Written beside and renamed: a broker (re)starting meanwhile never reads half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Provenance Gateway site"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _site_ca(tls: Path, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = tls / "site-ca.key.pem", tls / "site-ca.cert.pem"
    if key_path.exists() and cert_path.exists():
        # Kept across runs: devices were provisioned with this CA to verify the broker.
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = _cert(cert_path, "site CA certificate")
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise MalformedError(
                f"{key_path} is not the key of {cert_path}.", reason="bad-broker-config"
            )
        if cert.not_valid_after_utc > now:
            return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("Provenance Gateway site CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=_SITE_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, _pem(cert))
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    cn: str,
    now: dt.datetime,
    *,
    server_names: tuple[str, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [
                    ExtendedKeyUsageOID.SERVER_AUTH
                    if server_names
                    else ExtendedKeyUsageOID.CLIENT_AUTH
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_names:
        # TLS clients match the host they dialled against the SAN (RFC 6125 §6.4): both forms.
        sans: list[x509.GeneralName] = []
        for name in dict.fromkeys(server_names):  # once each, in order
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _site_crl(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, now: dt.datetime
) -> x509.CertificateRevocationList:
    # Empty, but present: with a crlfile, OpenSSL refuses a leaf whose issuer has no CRL.
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - _SKEW)
        .next_update(now + dt.timedelta(days=_SITE_CRL_DAYS))
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def write_broker_config(  # noqa: PLR0913 - every argument is a separate, named deployment choice
    pki: Path,
    outdir: Path,
    *,
    now: dt.datetime,
    host: str = "127.0.0.1",
    port: int = 8883,
    limits: BrokerLimits | None = None,
    routine_workers: int = 1,
) -> BrokerConfig:
    """Write Mosquitto's configuration, ACL and TLS material for the PKI in *pki* into *outdir*.

    *routine_workers* > 1 adds client identities ``gateway-routine-2`` … ``-N`` for extra worker
    processes sharing the routine subscription (each connection needs its own identity, since the
    certificate CN is the client id). Raises a :class:`~gateway.core.errors.VerificationError`
    if the PKI is incomplete, a CA does not chain, or a CRL is forged or expired; nothing is
    written then.
    """
    if routine_workers < 1:
        raise ValueError("routine_workers must be at least 1")
    slugs = _manufacturer_slugs(pki)
    manufacturers = [_manufacturer(pki, slug, now) for slug in slugs]
    routine = tuple(f"gateway-routine-{i}" for i in range(2, routine_workers + 1))
    gateway_clients = tuple(sorted(GATEWAY_CLIENTS + routine))
    denied = _denied_before(outdir)
    acl = render_acl(gateway_clients, slugs, denied)

    outdir = outdir.resolve()
    tls = outdir / "tls"
    ca_key, ca = _site_ca(tls, now)
    site_crl = _site_crl(ca_key, ca, now)

    server_key, server = _leaf(ca_key, ca, host, now, server_names=(host, "localhost", "127.0.0.1"))
    _write(tls / "server.key.pem", _key_pem(server_key), private=True)
    _write(tls / "server.cert.pem", _pem(server))

    bundle = [ca]
    crls = [site_crl]
    for m in manufacturers:
        if not m.issuing_revoked:  # Step 3: no path to a trusted root remains for its devices
            bundle += [m.root, m.issuing]
        crls.extend(m.crls)
    _write(tls / "ca-bundle.pem", b"".join(map(_pem, bundle)))
    _write(tls / "site-ca.crl.pem", _pem(site_crl))
    _write(tls / "crl-bundle.pem", b"".join(map(_pem, crls)))

    clients: dict[str, ClientCredentials] = {}
    for cid in gateway_clients + tuple(f"mfr-{slug}" for slug in slugs):
        key, cert = _leaf(ca_key, ca, cid, now)
        creds = ClientCredentials(
            cid,
            tls / "site-ca.cert.pem",
            outdir / "clients" / cid / "cert.pem",
            outdir / "clients" / cid / "key.pem",
        )
        _write(creds.keyfile, _key_pem(key), private=True)
        _write(creds.certfile, _pem(cert))
        clients[cid] = creds

    next_updates = [c.next_update_utc for c in crls if c.next_update_utc is not None]
    config = BrokerConfig(
        directory=outdir,
        host=host,
        port=port,
        limits=limits or BrokerLimits(),
        manufacturers=slugs,
        revoked_issuers=tuple(m.slug for m in manufacturers if m.issuing_revoked),
        crl_next_update=min(next_updates),
        clients=clients,
        denied_devices=denied,
    )
    config.persistence_dir.mkdir(parents=True, exist_ok=True)
    _write(outdir / "acl", acl.encode())
    _write(outdir / "mosquitto.conf", config.mosquitto_conf().encode())
    _write(outdir / "broker.json", _config_json(config))
    return config
