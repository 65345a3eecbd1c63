"""A demo PKI of fictional medical-device manufacturers: root CA -> issuing CA -> devices.

TEST KEYS ONLY. Everything here is generated on the spot, unencrypted, for demos and tests.

Layout written by :func:`init_pki` (``provgw-sim pki init DIR``)::

    DIR/trust/<mfr>.root.pem            trust anchors (only roots here)
    DIR/trust/<mfr>.root.crl.pem        CRL by the root (revokes issuing CAs; empty at first)
    DIR/trust/<mfr>.issuing.crl.pem     CRL by the issuing CA (revokes devices; empty at first)
    DIR/manufacturers/<mfr>/{root,issuing}.{key,cert}.pem
    DIR/devices/<device-id>/{key.pem,cert.pem,chain.pem}   chain.pem = device + issuing
    DIR/devices.json                    one record per device (see DeviceRecord)
    DIR/consortium.key                  32 random bytes, hex (ledger pseudonym key)
    DIR/untrusted/...                   same layout for a manufacturer whose root is NOT in
                                        DIR/trust: its devices show "untrusted CA" refusals
    DIR/README.txt

Device certificates follow IEEE 802.1AR IDevID practice: subject CN = device id, O = manufacturer,
serialNumber = canonical UDI; keyUsage digitalSignature, extKeyUsage clientAuth (they also log in
to the MQTT broker), basicConstraints CA=false, and a GS1 Digital Link URI naming the UDI in the
subjectAltName.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeAlias

from biip.checksums import gs1_standard_check_digit
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.core.udi import Udi

__all__ = [
    "MANUFACTURERS",
    "UNTRUSTED",
    "CertifiedKey",
    "DeviceRecord",
    "ManufacturerSpec",
    "ModelSpec",
    "PrivateKey",
    "gtin14",
    "init_pki",
    "load_devices",
    "make_crl",
    "make_device_cert",
    "make_issuing_ca",
    "make_root_ca",
    "new_key",
    "revoke_device",
    "revoke_issuing_ca",
]

#: Device and CA keys: Ed25519 (COSE EdDSA) or P-256 (COSE ES256).
PrivateKey: TypeAlias = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
Alg = Literal["Ed25519", "P-256"]

#: Validity periods. IDevIDs live as long as the device (802.1AR §8.5); roots outlive them.
ROOT_DAYS = 25 * 365
ISSUING_DAYS = 15 * 365
DEVICE_DAYS = 10 * 365
CRL_DAYS = 365
#: Backdating of notBefore, so a device whose clock runs a little behind is not refused.
SKEW = timedelta(days=1)

_KINDS = ("infusion_pump", "patient_monitor", "ventilator")


@dataclass(frozen=True)
class ModelSpec:
    """One device model: its kind, name, GS1 item reference and serial-number prefix."""

    kind: str
    model: str
    item_ref: str
    serial_prefix: str


@dataclass(frozen=True)
class ManufacturerSpec:
    """A fictional manufacturer: GS1 company prefix, key algorithm and models."""

    slug: str
    name: str
    country: str
    alg: Alg
    company_prefix: str
    models: tuple[ModelSpec, ...]


#: Fictional manufacturers; GS1 company prefixes of plausible length for their country
#: (GS1 US 0-1, GS1 Finland 64, GS1 UK 50, GS1 Austria 90-91).
MANUFACTURERS: tuple[ManufacturerSpec, ...] = (
    ManufacturerSpec(
        slug="acme-infusion",
        name="Acme Infusion Systems",
        country="US",
        alg="Ed25519",
        company_prefix="0850034",
        models=(
            ModelSpec("infusion_pump", "Volara LVP 3", "10031", "VL3-"),
            ModelSpec("infusion_pump", "SyriFlow S2 syringe pump", "10042", "SF2-"),
        ),
    ),
    ManufacturerSpec(
        slug="borealis",
        name="Borealis Monitoring",
        country="FI",
        alg="P-256",
        company_prefix="6430061",
        models=(
            ModelSpec("patient_monitor", "Aurora M12 bedside monitor", "00120", "AM12"),
            ModelSpec("patient_monitor", "Aurora T4 transport monitor", "00140", "AT4"),
        ),
    ),
    ManufacturerSpec(
        slug="cardiff-respiratory",
        name="Cardiff Respiratory",
        country="GB",
        alg="P-256",
        company_prefix="506041327",
        models=(
            ModelSpec("ventilator", "Tidal V500 ICU ventilator", "500", "TV5-"),
            ModelSpec("ventilator", "Tidal T300 transport ventilator", "300", "TT3-"),
        ),
    ),
    ManufacturerSpec(
        slug="danube-medical",
        name="Danube Medical Technologies",
        country="AT",
        alg="Ed25519",
        company_prefix="9120047",
        models=(
            ModelSpec("infusion_pump", "Donau Infusa 7", "20071", "DI7."),
            ModelSpec("patient_monitor", "Donau Vita 9", "20093", "DV9."),
            ModelSpec("ventilator", "Donau Aerio 2", "20025", "DA2."),
        ),
    ),
)

#: A manufacturer whose root is NOT in the trust directory (a grey-market refurbisher).
UNTRUSTED = ManufacturerSpec(
    slug="grey-harbor",
    name="Grey Harbor Medical Refurb",
    country="US",
    alg="Ed25519",
    company_prefix="0860007",
    models=(ModelSpec("infusion_pump", "Reclaim LVP", "31001", "GHR-"),),
)

_SITES = ("riverside-general", "northgate-childrens")
_DEPARTMENTS = {
    "infusion_pump": ("icu", "general_ward", "operating_room", "emergency"),
    "patient_monitor": ("icu", "emergency", "general_ward", "operating_room"),
    "ventilator": ("icu", "operating_room", "emergency"),
}


@dataclass(frozen=True)
class CertifiedKey:
    """A private key with its certificate (a CA, or a device)."""

    key: PrivateKey
    cert: x509.Certificate


@dataclass(frozen=True)
class DeviceRecord:
    """One line of ``devices.json``: what the simulator needs to know about a device."""

    id: str
    manufacturer: str
    manufacturer_slug: str
    model: str
    kind: str
    udi: str
    gtin: str
    serial: str
    alg: str
    site: str
    department: str


# --- building blocks (used by init_pki and by tests that need odd certificates) --------------


def gtin14(company_prefix: str, item_ref: str, indicator: str = "0") -> str:
    """Return the GTIN-14 ``indicator + prefix + item ref + check digit`` (GS1 Gen Specs §7.9.1)."""
    body = indicator + company_prefix + item_ref
    if len(body) != 13 or not body.isdigit():
        msg = f"indicator, company prefix and item reference must be 13 digits, got {body!r}"
        raise ValueError(msg)
    return body + str(gs1_standard_check_digit(body))


def new_key(alg: Alg) -> PrivateKey:
    """Generate a fresh key: Ed25519 or P-256."""
    if alg == "Ed25519":
        return Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def make_root_ca(
    name: str, *, country: str = "US", alg: Alg, now: datetime, days: int = ROOT_DAYS
) -> CertifiedKey:
    """Make a self-signed manufacturer root CA (pathLen 1: one level of issuing CAs below)."""
    key = new_key(alg)
    subject = _ca_name(f"{name} Root CA", name, country)
    return _make_ca(key, subject, None, (now - SKEW, now - SKEW + timedelta(days=days)), 1)


def make_issuing_ca(
    root: CertifiedKey, *, alg: Alg, now: datetime, days: int = ISSUING_DAYS
) -> CertifiedKey:
    """Make an issuing (intermediate) CA signed by *root* (pathLen 0: it signs devices only).

    Its organisation and country are the root's.
    """
    key = new_key(alg)
    organisation = _attribute(root.cert.subject, NameOID.ORGANIZATION_NAME)
    country = _attribute(root.cert.subject, NameOID.COUNTRY_NAME)
    subject = _ca_name(f"{organisation} Device Issuing CA 1", organisation, country)
    return _make_ca(key, subject, root, (now - SKEW, now - SKEW + timedelta(days=days)), 0)


def make_device_cert(  # noqa: PLR0913 -- each override exists to build one negative test case
    issuing: CertifiedKey,
    udi: Udi,
    manufacturer: str,
    public_key: Ed25519PublicKey | ec.EllipticCurvePublicKey,
    *,
    now: datetime,
    days: int = DEVICE_DAYS,
    not_before: datetime | None = None,
    common_name: str | None = None,
) -> x509.Certificate:
    """Make an IDevID-style device certificate for *udi*, signed by *issuing*.

    ``not_before`` and ``common_name`` override the normal values, for negative tests.
    """
    start = not_before if not_before is not None else now - SKEW
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or udi.device_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, manufacturer),
            _serial_number_attribute(udi.canonical),
        ]
    )
    # GS1 Digital Link (GS1 DL standard §4): the UDI as a URI, a standard SAN form for it.
    link = f"https://id.gs1.org/01/{udi.gtin}/21/{udi.serial}"
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuing.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(link)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing.key.public_key()),
            critical=False,
        )
    )
    return _sign(builder, issuing.key)


def make_crl(
    ca: CertifiedKey,
    revoked: Iterable[tuple[int, datetime]],
    *,
    now: datetime,
    number: int,
    days: int = CRL_DAYS,
) -> x509.CertificateRevocationList:
    """Make a CRL by *ca* listing *revoked* (serial, revocation date), numbered *number*."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, _hash_for(ca.key))


# --- the demo directory ----------------------------------------------------------------------


def init_pki(
    directory: Path | str,
    *,
    devices_per_model: int = 2,
    now: datetime | None = None,
    manufacturers: Sequence[ManufacturerSpec] = MANUFACTURERS,
) -> list[DeviceRecord]:
    """Create the demo PKI in *directory* (new or empty) and return the trusted devices.

    Raises:
        FileExistsError: *directory* exists and is not empty.
        ValueError: *devices_per_model* is not between 1 and 999.

    """
    if not 1 <= devices_per_model <= 999:
        msg = f"devices per model must be between 1 and 999, got {devices_per_model}"
        raise ValueError(msg)
    root_dir = Path(directory)
    if root_dir.exists() and any(root_dir.iterdir()):
        msg = f"{root_dir} is not empty; choose a new directory for the demo PKI"
        raise FileExistsError(msg)
    when = now or datetime.now(UTC)
    trust = root_dir / "trust"
    trust.mkdir(parents=True)

    records: list[DeviceRecord] = []
    for spec in manufacturers:
        records += _manufacturer(root_dir, spec, devices_per_model, when, trust_dir=trust)
    _write_json(root_dir / "devices.json", records)

    # The untrusted manufacturer mirrors the layout under DIR/untrusted, minus a trust entry.
    untrusted = root_dir / "untrusted"
    untrusted_records = _manufacturer(untrusted, UNTRUSTED, 1, when, trust_dir=None)
    _write_json(untrusted / "devices.json", untrusted_records)

    _write(root_dir / "consortium.key", secrets.token_bytes(32).hex().encode() + b"\n", key=True)
    _write(root_dir / "README.txt", _README.encode())
    return records


def load_devices(directory: Path | str) -> list[DeviceRecord]:
    """Read ``devices.json`` from a PKI directory (or its ``untrusted`` subdirectory)."""
    raw = json.loads((Path(directory) / "devices.json").read_text(encoding="utf-8"))
    return [DeviceRecord(**item) for item in raw]


def revoke_device(directory: Path | str, device_id: str, *, now: datetime | None = None) -> int:
    """Revoke a device's certificate in its manufacturer's issuing-CA CRL; return its serial.

    Idempotent: revoking an already revoked device rewrites nothing.

    Raises:
        KeyError: no such device in ``devices.json``.

    """
    root_dir = Path(directory)
    by_id = {record.id: record for record in load_devices(root_dir)}
    if device_id not in by_id:
        msg = f"no device {device_id!r} in {root_dir / 'devices.json'}"
        raise KeyError(msg)
    slug = by_id[device_id].manufacturer_slug
    cert = _load_cert(root_dir / "devices" / device_id / "cert.pem")
    issuing = _load_ca(root_dir / "manufacturers" / slug, "issuing")
    _add_to_crl(root_dir / "trust" / f"{slug}.issuing.crl.pem", issuing, cert.serial_number, now)
    return cert.serial_number


def revoke_issuing_ca(directory: Path | str, mfr_slug: str, *, now: datetime | None = None) -> int:
    """Revoke a manufacturer's issuing CA in its root's CRL; return the CA's serial.

    Every device certificate that CA issued is then refused. Idempotent.

    Raises:
        KeyError: no such manufacturer in the directory.

    """
    root_dir = Path(directory)
    folder = root_dir / "manufacturers" / mfr_slug
    if not folder.is_dir():
        msg = f"no manufacturer {mfr_slug!r} in {root_dir / 'manufacturers'}"
        raise KeyError(msg)
    root = _load_ca(folder, "root")
    issuing = _load_cert(folder / "issuing.cert.pem")
    _add_to_crl(root_dir / "trust" / f"{mfr_slug}.root.crl.pem", root, issuing.serial_number, now)
    return issuing.serial_number


# --- private helpers -------------------------------------------------------------------------


def _manufacturer(
    base: Path,
    spec: ManufacturerSpec,
    devices_per_model: int,
    now: datetime,
    *,
    trust_dir: Path | None,
) -> list[DeviceRecord]:
    root = make_root_ca(spec.name, country=spec.country, alg=spec.alg, now=now)
    issuing = make_issuing_ca(root, alg=spec.alg, now=now)
    folder = base / "manufacturers" / spec.slug
    for label, pair in (("root", root), ("issuing", issuing)):
        _write(folder / f"{label}.key.pem", _key_pem(pair.key), key=True)
        _write(folder / f"{label}.cert.pem", _cert_pem(pair.cert))
    if trust_dir is not None:
        _write(trust_dir / f"{spec.slug}.root.pem", _cert_pem(root.cert))
        for label, pair in (("root", root), ("issuing", issuing)):
            crl = make_crl(pair, (), now=now, number=1)
            _write(trust_dir / f"{spec.slug}.{label}.crl.pem", crl.public_bytes(_PEM))

    records: list[DeviceRecord] = []
    for model_index, model in enumerate(spec.models):
        assert model.kind in _KINDS
        gtin = gtin14(spec.company_prefix, model.item_ref)
        for number in range(1, devices_per_model + 1):
            # Serials look like "<model prefix><year><sequence>", e.g. "VL3-2400017".
            serial = f"{model.serial_prefix}{now:%y}{number + 16 * model_index:05d}"
            udi = Udi(gtin=gtin, serial=serial)
            key = new_key(spec.alg)
            cert = make_device_cert(issuing, udi, spec.name, key.public_key(), now=now)
            device_dir = base / "devices" / udi.device_id
            _write(device_dir / "key.pem", _key_pem(key), key=True)
            _write(device_dir / "cert.pem", _cert_pem(cert))
            _write(device_dir / "chain.pem", _cert_pem(cert) + _cert_pem(issuing.cert))
            departments = _DEPARTMENTS[model.kind]
            records.append(
                DeviceRecord(
                    id=udi.device_id,
                    manufacturer=spec.name,
                    manufacturer_slug=spec.slug,
                    model=model.model,
                    kind=model.kind,
                    udi=udi.canonical,
                    gtin=gtin,
                    serial=serial,
                    alg=spec.alg,
                    site=_SITES[number % len(_SITES)],
                    department=departments[(number + model_index) % len(departments)],
                )
            )
    return records


def _add_to_crl(path: Path, ca: CertifiedKey, serial: int, now: datetime | None) -> None:
    when = now or datetime.now(UTC)
    current = x509.load_pem_x509_crl(path.read_bytes())
    if current.get_revoked_certificate_by_serial_number(serial) is not None:
        return
    revoked = [(entry.serial_number, entry.revocation_date_utc) for entry in current]
    revoked.append((serial, when))
    number = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    # RFC 5280 §5.2.3: the CRL number increases with each CRL the CA issues.
    crl = make_crl(ca, revoked, now=when, number=number + 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(crl.public_bytes(_PEM))
    tmp.replace(path)  # atomic: a gateway reading the trust dir never sees half a CRL


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_ca(folder: Path, label: str) -> CertifiedKey:
    key = serialization.load_pem_private_key(
        (folder / f"{label}.key.pem").read_bytes(), password=None
    )
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        msg = f"{folder / label}.key.pem is neither an Ed25519 nor a P-256 key"
        raise TypeError(msg)
    return CertifiedKey(key, _load_cert(folder / f"{label}.cert.pem"))


def _ca_name(common_name: str, organisation: str, country: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _make_ca(
    key: PrivateKey,
    subject: x509.Name,
    issuer: CertifiedKey | None,
    validity: tuple[datetime, datetime],
    path_length: int,
) -> CertifiedKey:
    # RFC 5280 §4.2.1.9/§4.2.1.3: a CA has basicConstraints CA (critical) with a pathLen and
    # keyUsage keyCertSign + cRLSign; SKI/AKI let verifiers pick the right issuer key.
    signer = issuer.key if issuer is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    return CertifiedKey(key, _sign(builder, signer))


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    value = name.get_attributes_for_oid(oid)[0].value
    assert isinstance(value, str)
    return value


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _serial_number_attribute(value: str) -> x509.NameAttribute[str]:
    # X.520 types serialNumber as PrintableString, which has no '_'; a serial with one is
    # written as UTF8String, which verifiers (and our own) read the same way.
    printable = all(ch.isalnum() or ch in " '()+,-./:=?" for ch in value) and value.isascii()
    if printable:
        return x509.NameAttribute(NameOID.SERIAL_NUMBER, value)
    return x509.NameAttribute(NameOID.SERIAL_NUMBER, value, _ASN1Type.UTF8String)


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs the message itself (RFC 8032); ECDSA P-256 pairs with SHA-256.
    return None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    return builder.sign(key, _hash_for(key))


_PEM = serialization.Encoding.PEM


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(_PEM)


def _write(path: Path, data: bytes, *, key: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if key:
        # Private keys readable by the owner only, even though they are test keys.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _write_json(path: Path, records: Sequence[DeviceRecord]) -> None:
    text = json.dumps([asdict(r) for r in records], indent=2) + "\n"
    _write(path, text.encode())


_README = """\
DEMO PKI - TEST KEYS ONLY, NOT FOR PRODUCTION.

Generated by `provgw-sim pki init`. Every private key here is unencrypted and was created for
demonstrations and tests of Provenance Gateway. The manufacturers are fictional.

trust/          what a gateway trusts: manufacturer root CAs and their CRLs
manufacturers/  each manufacturer's root and issuing CA (keys and certificates)
devices/        each device's key, certificate and chain (device + issuing CA)
devices.json    the device inventory (id, manufacturer, model, kind, UDI, site, department)
consortium.key  the key of the ledger pseudonyms (HMAC-SHA256 over the UDI)
untrusted/      a manufacturer whose root is NOT in trust/: its devices must be refused

Revoke with `provgw-sim pki revoke DIR --device ID` or `--issuing-ca SLUG`.
"""
