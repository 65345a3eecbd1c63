"""Device identity: X.509 chains to manufacturer roots, CRL revocation, kid binding and rotation.

Each manufacturer runs a root CA (the trust anchor the hospital installs) and an issuing CA
(intermediate) that signs IDevID-style device certificates (IEEE 802.1AR): subject CN = device
id, O = manufacturer, serialNumber = canonical UDI. A device sends its chain (leaf first) in the
COSE ``x5chain`` header (RFC 9360 §2) on first contact; :func:`verify_device_chain` turns it into
a :class:`DeviceIdentity`, and :class:`DeviceRegistry` then resolves the device by ``kid`` alone.

Everything here is pure: PEM/DER bytes and ``now`` come in, nothing is read from disk or clock.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509.oid import ExtensionOID, NameOID

from gateway.core.errors import (
    ExpiredError,
    MalformedError,
    MismatchError,
    PolicyError,
    RevokedError,
    UntrustedSignerError,
)
from gateway.core.udi import Udi

__all__ = [
    "DeviceIdentity",
    "DevicePublicKey",
    "DeviceRegistry",
    "TrustStore",
    "kid_for",
    "verify_device_chain",
]

#: Device keys: Ed25519 (COSE alg -8) or P-256 (COSE alg -7), the two the wire format allows.
DevicePublicKey: TypeAlias = Ed25519PublicKey | EllipticCurvePublicKey

#: Most certificates accepted in one x5chain: leaf, issuing CA, one more CA, and a root.
MAX_CHAIN = 4
#: Length of a kid in bytes (a truncated SHA-256, like RFC 7093 §2 method 1 but over the SPKI).
KID_LEN = 16

# Critical extensions this verifier processes; any other critical extension is refused because
# RFC 5280 §4.2 requires rejecting a certificate with a critical extension it cannot process.
_UNDERSTOOD_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)
# CA key types that can sign a CRL (X25519/X448 keys cannot sign at all).
_SIGNING_KEYS = (Ed25519PublicKey, EllipticCurvePublicKey, RSAPublicKey, Ed448PublicKey)
# Hashes a certificate or CRL signature may use; SHA-1 and MD5 collisions are practical.
_STRONG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def kid_for(public_key: DevicePublicKey) -> bytes:
    """Return the key id: the first 16 bytes of SHA-256 over the SubjectPublicKeyInfo DER.

    Derived from the key itself, so the kid cannot be claimed for another key: a message whose
    kid resolves to a device is still verified with that device's key.
    """
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:KID_LEN]


@dataclass(frozen=True)
class DeviceIdentity:
    """A device whose certificate chain verified against the trust store at a given time.

    Obtain one from :func:`verify_device_chain`; the fields restate what the certificate says.
    ``issuers`` is the verified path above the leaf (issuing CA first, trust anchor last), kept
    so that :meth:`TrustStore.check_still_valid` can re-check dates and CRLs cheaply.
    """

    device_id: str
    manufacturer: str
    udi: Udi
    public_key: DevicePublicKey = field(repr=False)
    kid: bytes
    certificate: x509.Certificate = field(repr=False)
    issuers: tuple[x509.Certificate, ...] = field(default=(), repr=False)


#: Most identities whose re-check plan a trust store keeps (one per enrolled device).
_RECHECK_MAX = 200_000
#: Most CA certificates a trust store interns (real stores hold a few dozen).
_SHARED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class _Recheck:
    """What :meth:`TrustStore.check_still_valid` needs of one identity, beside the time.

    ``clean``: anchored in the store and no certificate of the path on a CRL, every CRL needed
    verified; then the identity is valid exactly while ``valid_from <= now <= valid_until`` (the
    path's validity periods and the CRLs' nextUpdate, intersected).
    """

    identity: DeviceIdentity
    clean: bool
    valid_from: datetime
    valid_until: datetime


class TrustStore:
    """Manufacturer root CAs (trust anchors), known intermediates, and CRLs. Immutable.

    Intermediates are not trusted by being here: they only help build a path when a chain omits
    them. Every path must still end at a root, by signatures.
    """

    __slots__ = (
        "_crls",
        "_intermediates",
        "_recheck",
        "_root_set",
        "_roots",
        "_shared",
        "_verified_crls",
    )

    def __init__(
        self,
        roots: Sequence[x509.Certificate],
        crls: Sequence[x509.CertificateRevocationList],
        intermediates: Sequence[x509.Certificate],
    ) -> None:
        self._roots: tuple[x509.Certificate, ...] = tuple(roots)
        self._root_set = frozenset(self._roots)
        # Memo of CRLs whose signature verified under a given issuer certificate: a cache of a
        # pure function of immutable inputs, so the store stays observably immutable.
        self._verified_crls: dict[x509.Certificate, tuple[x509.CertificateRevocationList, ...]]
        self._verified_crls = {}
        # Memo of check_still_valid's time-independent part, per enrolled identity (kid -> plan).
        self._recheck: dict[bytes, _Recheck] = {}
        # Interned CA certificates of verified paths (see shared()).
        self._shared: dict[x509.Certificate, x509.Certificate] = {root: root for root in roots}
        self._intermediates: tuple[x509.Certificate, ...] = tuple(intermediates)
        by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for crl in crls:
            by_issuer.setdefault(crl.issuer, []).append(crl)
        self._crls: Mapping[x509.Name, tuple[x509.CertificateRevocationList, ...]] = (
            MappingProxyType({name: tuple(lists) for name, lists in by_issuer.items()})
        )

    @classmethod
    def from_pem(
        cls,
        roots: Iterable[bytes],
        crls: Iterable[bytes] = (),
        intermediates: Iterable[bytes] = (),
    ) -> TrustStore:
        """Build a store from PEM bytes (each item may hold several PEM blocks).

        Raises:
            MalformedError: a PEM block is not a certificate or CRL.
            PolicyError: a root is not a self-signed CA certificate.

        """
        root_certs = [cert for blob in roots for cert in _load_pem_certs(blob, "trust anchor")]
        for root in root_certs:
            _check_root(root)
        crl_list = [_load_pem_crl(blob) for blob in crls]
        inter = [cert for blob in intermediates for cert in _load_pem_certs(blob, "intermediate")]
        return cls(root_certs, crl_list, inter)

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The trust anchors."""
        return self._roots

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """Known intermediate CA certificates (path-building helpers, not anchors)."""
        return self._intermediates

    @property
    def crls_next_update(self) -> datetime | None:
        """The earliest nextUpdate of this store's CRLs (RFC 5280 §5.1.2.5); None without one.

        From then the devices under that CRL's issuer are refused as ``crl-stale`` until a
        current CRL takes its place.
        """
        dates = [
            crl.next_update_utc
            for lists in self._crls.values()
            for crl in lists
            if crl.next_update_utc is not None
        ]
        return min(dates, default=None)

    def crls_by(self, issuer: x509.Name) -> tuple[x509.CertificateRevocationList, ...]:
        """CRLs that name *issuer* (not yet checked against its key)."""
        return self._crls.get(issuer, ())

    def is_anchor(self, cert: x509.Certificate) -> bool:
        """Whether *cert* is one of this store's trust anchors."""
        return cert in self._root_set

    def shared(self, ca: x509.Certificate) -> x509.Certificate:
        """Return one shared object equal to the CA certificate *ca* (interning, by DER).

        Certificates are immutable, so equal ones are interchangeable; sharing them keeps one
        copy of a CA's parsed fields however many devices it issued. Call it only with CAs of
        verified paths: that bounds the table by the CAs the store trusts.
        """
        kept = self._shared.get(ca)
        if kept is None:
            if len(self._shared) >= _SHARED_MAX:
                return ca
            kept = self._shared[ca] = ca
        return kept

    def check_still_valid(self, identity: DeviceIdentity, now: datetime) -> None:
        """Re-check an enrolled identity at *now*: anchor still trusted, dates, CRLs.

        The registry holds what was valid at enrolment; a CRL or the clock may have moved since.
        This repeats steps 3 and 5 of :func:`verify_device_chain` over the stored path, without
        re-verifying certificate signatures (they cannot change), so it is cheap per message:
        what does not depend on *now* (anchor, CRL signatures, serials on the CRLs) is worked out
        once per identity and this store (both immutable), leaving two time comparisons.

        Raises:
            UntrustedSignerError: the identity's root is no longer in this store.
            ExpiredError: a certificate on the path (or a CRL) is out of date.
            RevokedError: the device certificate or its issuing CA has been revoked.

        """
        _require_aware(now)
        plan = self._recheck.get(identity.kid)
        if plan is None or plan.identity is not identity:
            plan = self._plan_recheck(identity)
        if plan.clean and plan.valid_from <= now <= plan.valid_until:
            return  # the hot path: nothing to report, so no message is formatted
        # Something fails at *now*: run every check in its order, for the exact error.
        self._check_path(identity, now)

    def _plan_recheck(self, identity: DeviceIdentity) -> _Recheck:
        path = (identity.certificate, *identity.issuers)
        anchored = bool(identity.issuers) and self.is_anchor(path[-1])
        clean = anchored
        # RFC 5280 §6.1.3 (a)(2): valid iff notBefore <= now <= notAfter for every certificate,
        # i.e. iff the latest notBefore <= now <= the earliest notAfter.
        valid_from = max(cert.not_valid_before_utc for cert in path)
        valid_until = min(cert.not_valid_after_utc for cert in path)
        for child, issuer in itertools.pairwise(path):
            if not self.crls_by(issuer.subject):
                continue  # no CRL for this CA: soft-fail, as in _check_not_revoked
            valid = self.verified_crls(issuer)
            if not valid:
                clean = False  # crl-unverifiable, whatever the time
            for crl in valid:
                # RFC 5280 §6.3.3 (a)(2): a CRL is usable until its nextUpdate.
                if crl.next_update_utc is not None:
                    valid_until = min(valid_until, crl.next_update_utc)
                if crl.get_revoked_certificate_by_serial_number(child.serial_number) is not None:
                    clean = False  # revoked, whatever the time
        plan = _Recheck(identity, clean=clean, valid_from=valid_from, valid_until=valid_until)
        if len(self._recheck) >= _RECHECK_MAX:
            self._recheck.clear()  # bounded memory; a miss only costs working it out again
        self._recheck[identity.kid] = plan
        return plan

    def _check_path(self, identity: DeviceIdentity, now: datetime) -> None:
        # The checks in full, in the order of verify_device_chain (step 2's anchor, step 3's
        # dates, step 5's CRLs); the first failure is the error reported.
        path = (identity.certificate, *identity.issuers)
        if not identity.issuers or not self.is_anchor(path[-1]):
            raise UntrustedSignerError(
                f"Device {identity.device_id} was enrolled under a root that is no longer "
                "trusted; it must present its certificate chain again.",
                reason="anchor-removed",
            )
        for cert in path:
            _check_dates(cert, now)
        for child, issuer in itertools.pairwise(path):
            _check_not_revoked(child, issuer, self, now)

    def verified_crls(self, issuer: x509.Certificate) -> tuple[x509.CertificateRevocationList, ...]:
        """CRLs naming *issuer* whose signature verifies with its key (memoised)."""
        cached = self._verified_crls.get(issuer)
        if cached is None:
            cached = _verify_crls(issuer, self.crls_by(issuer.subject))
            self._verified_crls[issuer] = cached
        return cached


def verify_device_chain(
    x5chain: Sequence[bytes] | bytes, trust: TrustStore, now: datetime
) -> DeviceIdentity:
    """Verify a device's certificate chain and return who the device is.

    Steps (each block below is labelled with its step):

    1. Parse every certificate as DER, at most ``MAX_CHAIN`` (malformed or endless input).
    2. Build the path leaf -> issuing CA -> root by issuer name and signature, ending at a trust
       anchor (forged certificate, certificate from an untrusted CA, signed by the wrong CA).
    3. Check every certificate's validity dates against ``now`` (expired or stolen old keys).
    4. Check CA basic constraints, key usage, path length and critical extensions, and that the
       leaf is an end entity with a device key (a device certificate minting other devices).
    5. Check every certificate on the path against its issuer's CRL, whose signature and
       freshness are verified first (revoked device or revoked issuing CA; forged CRL).
    6. Read the identity: CN is a device id, serialNumber the UDI naming the same device, O the
       manufacturer named by the root (spoofed device id, one manufacturer posing as another).

    Raises:
        MalformedError, UntrustedSignerError, ExpiredError, PolicyError, RevokedError,
        MismatchError: as labelled in the steps.

    """
    _require_aware(now)

    # Step 1: parse DER; stops malformed certificates and oversized chains before any crypto.
    certs = _parse_chain(x5chain)
    leaf = certs[0]

    # Step 2: path building by signatures; stops untrusted CAs and certs signed by another CA.
    path = _build_path(leaf, certs[1:], trust)

    # Step 3: validity dates; stops expired and not-yet-valid certificates on the whole path.
    for cert in path:
        _check_dates(cert, now)

    # Step 4: CA constraints; stops an end-entity (device) certificate acting as a CA.
    _check_constraints(path)

    # Step 5: revocation; stops revoked device certificates and revoked issuing CAs.
    for child, issuer in itertools.pairwise(path):
        _check_not_revoked(child, issuer, trust, now)

    # Step 6: identity; stops a CN that names another device than the UDI, or another maker.
    identity = _identity(path)

    # Memory, not a check: an identity lives as long as its device is enrolled (thousands per
    # process), and cryptography caches the parsed names and extensions on each certificate
    # object (~7 kB a certificate here). So the CAs are shared objects, one per CA, and the
    # leaf is a fresh, equal copy that caches only what is used later.
    return replace(
        identity,
        certificate=x509.load_der_x509_certificate(leaf.public_bytes(serialization.Encoding.DER)),
        issuers=tuple(trust.shared(ca) for ca in identity.issuers),
    )


class DeviceRegistry:
    """In-memory binding of kid -> device identity, learnt from the first valid chain.

    After enrolment a device signs by kid only. A device id is bound to one key at a time: a new
    key is accepted only through :meth:`rotate`, announced under the old key, so a stolen
    certificate for the same device id cannot silently take over its history.
    """

    def __init__(self) -> None:
        self._by_kid: dict[bytes, DeviceIdentity] = {}
        self._by_device: dict[str, DeviceIdentity] = {}
        self._retired_kids: dict[bytes, str] = {}
        self._revoked: set[str] = set()

    def __len__(self) -> int:
        return len(self._by_device)

    def enrol(self, identity: DeviceIdentity) -> None:
        """Bind *identity*'s kid to its device id; enrolling the same binding again is a no-op.

        Raises:
            RevokedError: the device was revoked.
            UntrustedSignerError: the device id is bound to another key, or the key (kid) is
                bound to another device (a cloned key).

        """
        self._refuse_revoked(identity.device_id)
        current = self._by_device.get(identity.device_id)
        if current is not None:
            if current.kid == identity.kid:
                return
            raise UntrustedSignerError(
                f"Device {identity.device_id} is already enrolled with another key; a new key is "
                "accepted only through a key rotation signed by the old key.",
                reason="key-conflict",
            )
        self._refuse_foreign_kid(identity)
        self._by_kid[identity.kid] = identity
        self._by_device[identity.device_id] = identity

    def by_kid(self, kid: bytes) -> DeviceIdentity:
        """Return the enrolled identity for *kid*.

        Raises:
            RevokedError: the kid belonged to a device that has been revoked.
            UntrustedSignerError: the kid is unknown, or its key was rotated out.

        """
        identity = self._by_kid.get(kid)
        if identity is not None:
            return identity
        retired_for = self._retired_kids.get(kid)
        if retired_for is not None:
            self._refuse_revoked(retired_for)
            raise UntrustedSignerError(
                f"Key {kid.hex()} of device {retired_for} was replaced by a key rotation; "
                "messages signed with it are no longer accepted.",
                reason="retired-key",
            )
        raise UntrustedSignerError(
            f"No enrolled device has key id {kid.hex()}; the device must first send its "
            "certificate chain.",
            reason="unknown-kid",
        )

    def by_device_id(self, device_id: str) -> DeviceIdentity:
        """Return the enrolled identity of *device_id*.

        Raises:
            RevokedError: the device was revoked.
            UntrustedSignerError: the device is not enrolled.

        """
        self._refuse_revoked(device_id)
        identity = self._by_device.get(device_id)
        if identity is None:
            raise UntrustedSignerError(
                f"Device {device_id} is not enrolled.", reason="unknown-device"
            )
        return identity

    def rotate(
        self,
        old: DeviceIdentity,
        new_chain: Sequence[bytes] | bytes,
        trust: TrustStore,
        now: datetime,
    ) -> DeviceIdentity:
        """Replace *old*'s key by the one certified in *new_chain*; the old kid stops resolving.

        The caller has verified that the rotation announcement is signed by *old*'s key. A
        rotation delivered twice (MQTT QoS 1) returns the already-enrolled new identity.

        Raises:
            RevokedError: the device or the new certificate is revoked.
            UntrustedSignerError: *old* is not the enrolled key of its device, or the new key
                is bound to another device.
            MismatchError: the new certificate names another device.
            (and whatever :func:`verify_device_chain` raises for the new chain)

        """
        self._refuse_revoked(old.device_id)
        new = verify_device_chain(new_chain, trust, now)
        if new.device_id != old.device_id:
            raise MismatchError(
                f"Key rotation for device {old.device_id} carries a certificate for "
                f"{new.device_id}; a device can only rotate its own key.",
                reason="rotation-device-mismatch",
            )
        current = self._by_device.get(old.device_id)
        if current is not None and current.kid == new.kid and old.kid in self._retired_kids:
            return current  # this rotation was already applied: a redelivered announcement
        if current is None or current.kid != old.kid:
            raise UntrustedSignerError(
                f"Key rotation for device {old.device_id} is signed by a key that is not its "
                "enrolled key.",
                reason="rotation-not-current-key",
            )
        if new.kid == old.kid:
            # Same key, renewed certificate: keep the binding, carry the newer certificate.
            self._by_kid[new.kid] = new
            self._by_device[new.device_id] = new
            return new
        self._refuse_foreign_kid(new)
        del self._by_kid[old.kid]
        self._retired_kids[old.kid] = old.device_id
        self._by_kid[new.kid] = new
        self._by_device[new.device_id] = new
        return new

    def revoke(self, device_id: str, *, kid: bytes | None = None) -> None:
        """Refuse *device_id* from now on: its kid stops resolving and it cannot enrol again.

        *kid*: its key, when this registry has not enrolled it (a cache loading a device the
        store holds as revoked), so that messages signed with it are refused as revoked.
        """
        self._revoked.add(device_id)
        identity = self._by_device.pop(device_id, None)
        if identity is not None:
            del self._by_kid[identity.kid]
            self._retired_kids[identity.kid] = device_id
        if kid is not None:
            self._retired_kids.setdefault(kid, device_id)

    def _refuse_revoked(self, device_id: str) -> None:
        if device_id in self._revoked:
            raise RevokedError(
                f"Device {device_id} has been revoked; its messages are refused.",
                reason="device-revoked",
            )

    def _refuse_foreign_kid(self, identity: DeviceIdentity) -> None:
        holder = self._by_kid.get(identity.kid)
        other = holder.device_id if holder is not None else self._retired_kids.get(identity.kid)
        if other is not None and other != identity.device_id:
            raise UntrustedSignerError(
                f"The key of device {identity.device_id} is already the key of device {other}: "
                "two devices must never share a key (cloned device?).",
                reason="shared-key",
            )


# --- helpers -------------------------------------------------------------------------------


def _load_pem_certs(blob: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(blob)
    except ValueError as exc:
        raise MalformedError(f"A {what} is not a PEM certificate: {exc}") from exc
    for cert in certs:
        _parse_extensions(cert)
    return certs


def _load_pem_crl(blob: bytes) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_pem_x509_crl(blob)
        _ = crl.extensions
    except ValueError as exc:
        raise MalformedError(f"A revocation list is not a PEM CRL: {exc}") from exc
    return crl


def _parse_extensions(cert: x509.Certificate) -> x509.Extensions:
    # cryptography parses extensions lazily; force it here so a malformed or duplicated
    # extension (RFC 5280 §4.2: "MUST NOT include more than one instance") is a MalformedError.
    try:
        return cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise MalformedError(
            f"Certificate {_name(cert.subject)} has malformed extensions: {exc}"
        ) from exc


def _check_root(root: x509.Certificate) -> None:
    subject = _name(root.subject)
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PolicyError(
            f"Trust anchor {subject} is not a self-signed root CA; only manufacturer roots "
            "belong in the trust store.",
            reason="bad-trust-anchor",
        ) from exc
    if not _is_ca(root, check_cert_sign=True):
        raise PolicyError(
            f"Trust anchor {subject} is not a CA certificate (basicConstraints CA with "
            "keyCertSign).",
            reason="bad-trust-anchor",
        )


def _parse_chain(x5chain: Sequence[bytes] | bytes) -> list[x509.Certificate]:
    # RFC 9360 §2: x5chain is one bstr for a single certificate, else an array of bstr.
    if isinstance(x5chain, bytes):
        x5chain = [x5chain]
    if not x5chain or not isinstance(x5chain, (list, tuple)):
        raise MalformedError(
            "The device sent no certificate chain (x5chain must be a list of certificates)."
        )
    if len(x5chain) > MAX_CHAIN:
        raise MalformedError(
            f"The device's certificate chain has {len(x5chain)} certificates; at most "
            f"{MAX_CHAIN} are accepted."
        )
    certs: list[x509.Certificate] = []
    for index, der in enumerate(x5chain):
        if not isinstance(der, bytes):
            raise MalformedError(f"Certificate {index} of the device's chain is not bytes.")
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise MalformedError(
                f"Certificate {index} of the device's chain is not DER X.509: {exc}"
            ) from exc
        _parse_extensions(cert)
        certs.append(cert)
    return certs


def _build_path(
    leaf: x509.Certificate, supplied: Sequence[x509.Certificate], trust: TrustStore
) -> list[x509.Certificate]:
    # RFC 5280 §6.1 path validation needs a path first; we search issuers by name and keep the
    # one whose signature verifies. Roots are tried first so a path ends at the shortest anchor.
    if any(leaf == root for root in trust.roots):
        raise PolicyError("A device presented a root CA certificate as its own.", reason="not-leaf")
    path = [leaf]
    pool = [*supplied, *trust.intermediates]
    while True:
        current = path[-1]
        issuer_name = current.issuer
        wrong_signature = False
        for candidate, is_root in [(r, True) for r in trust.roots] + [(c, False) for c in pool]:
            if candidate.subject != issuer_name or candidate in path:
                continue
            try:
                current.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                wrong_signature = True
                continue
            _check_signature_hash(current)
            path.append(candidate)
            if is_root:
                return path
            break
        else:
            subject = _name(current.subject)
            issuer = _name(issuer_name)
            if wrong_signature:
                raise UntrustedSignerError(
                    f"Certificate {subject} claims to be issued by {issuer}, but its signature "
                    f"does not verify with that CA's key: it was signed by another CA.",
                    reason="chain-signature",
                )
            raise UntrustedSignerError(
                f"Certificate {subject} was issued by {issuer}, which is not a trusted "
                "manufacturer root and does not chain to one.",
                reason="untrusted-issuer",
            )
        if len(path) >= MAX_CHAIN:
            raise UntrustedSignerError(
                f"The chain of {_name(leaf.subject)} reaches no trusted root within "
                f"{MAX_CHAIN} certificates.",
                reason="untrusted-issuer",
            )


def _check_signature_hash(cert: x509.Certificate) -> None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise PolicyError(
            f"Certificate {_name(cert.subject)} uses an unsupported signature algorithm."
        ) from exc
    # Ed25519 signatures carry no separate hash (None); others must use SHA-2.
    if algorithm is not None and not isinstance(algorithm, _STRONG_HASHES):
        raise PolicyError(
            f"Certificate {_name(cert.subject)} is signed with {algorithm.name}, which is too "
            "weak; SHA-256 or better is required.",
            reason="weak-signature",
        )


def _check_dates(cert: x509.Certificate, now: datetime) -> None:
    # RFC 5280 §6.1.3 (a)(2): the certificate validity period includes the current time.
    # The subject is formatted only for an error (~4 us a name, RFC 4514).
    if now < cert.not_valid_before_utc:
        raise ExpiredError(
            f"Certificate {_name(cert.subject)} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the device's and the "
            "gateway's clocks.",
            reason="not-yet-valid",
        )
    if now > cert.not_valid_after_utc:
        raise ExpiredError(
            f"Certificate {_name(cert.subject)} expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; the manufacturer must issue a new "
            "one.",
            reason="expired",
        )


def _is_ca(cert: x509.Certificate, *, check_cert_sign: bool) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    if not check_cert_sign:
        return True
    usage = _key_usage(cert)
    return usage is not None and usage.key_cert_sign


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _check_constraints(path: Sequence[x509.Certificate]) -> None:
    # RFC 5280 §4.2: refuse critical extensions we do not process, anywhere on the path.
    for cert in path:
        for ext in cert.extensions:
            if ext.critical and ext.oid not in _UNDERSTOOD_CRITICAL:
                raise PolicyError(
                    f"Certificate {_name(cert.subject)} has a critical extension "
                    f"{ext.oid.dotted_string} this gateway does not understand.",
                    reason="unknown-critical-extension",
                )
    # RFC 5280 §6.1.4 (k), (l), (n): every issuer is a CA with keyCertSign, within pathLen.
    for depth, ca in enumerate(path[1:]):
        if not _is_ca(ca, check_cert_sign=True):
            raise UntrustedSignerError(
                f"Certificate {_name(ca.subject)} issued another certificate but is not a CA "
                "(basicConstraints CA with keyCertSign); a device cannot certify devices.",
                reason="not-a-ca",
            )
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        # `depth` = number of intermediate CAs below this one on the path.
        if constraints.path_length is not None and depth > constraints.path_length:
            raise UntrustedSignerError(
                f"CA {_name(ca.subject)} allows {constraints.path_length} intermediate CAs "
                f"below it, but the path has {depth}.",
                reason="path-length",
            )
    # IEEE 802.1AR §8: an IDevID is an end entity whose key signs (digitalSignature).
    leaf = path[0]
    if _is_ca(leaf, check_cert_sign=False):
        raise PolicyError(
            f"Certificate {_name(leaf.subject)} is a CA certificate, not a device certificate.",
            reason="not-leaf",
        )
    usage = _key_usage(leaf)
    if usage is None or not usage.digital_signature:
        raise PolicyError(
            f"Device certificate {_name(leaf.subject)} does not allow digital signatures "
            "(keyUsage digitalSignature).",
            reason="key-usage",
        )
    key = leaf.public_key()
    if not isinstance(key, Ed25519PublicKey) and not (
        isinstance(key, EllipticCurvePublicKey) and isinstance(key.curve, SECP256R1)
    ):
        raise PolicyError(
            f"Device certificate {_name(leaf.subject)} has a key that is neither Ed25519 nor "
            "P-256; devices sign with EdDSA or ES256 only.",
            reason="device-key-type",
        )


def _check_not_revoked(
    cert: x509.Certificate, issuer: x509.Certificate, trust: TrustStore, now: datetime
) -> None:
    # RFC 5280 §6.3.3: use CRLs issued by the certificate's issuer, verified with its key
    # (b)(…)/(f), and current (a)(2): nextUpdate not passed. A missing CRL is soft-fail: the
    # trust directory decides which CAs publish CRLs; a present but bad CRL fails closed.
    if not trust.crls_by(issuer.subject):
        return
    valid = trust.verified_crls(issuer)
    if not valid:
        raise RevokedError(
            f"The revocation list of {_name(issuer.subject)} is not signed by that CA, so the "
            f"revocation status of {_name(cert.subject)} cannot be established; replace the "
            "CRL in the trust directory.",
            reason="crl-unverifiable",
        )
    for crl in valid:
        next_update = crl.next_update_utc
        if next_update is not None and now > next_update:
            raise ExpiredError(
                f"The revocation list of {_name(issuer.subject)} was due for renewal on "
                f"{next_update:%Y-%m-%d}; fetch a current CRL from the manufacturer.",
                reason="crl-stale",
            )
        revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if revoked is not None:
            what = "CA" if _is_ca(cert, check_cert_sign=False) else "device certificate"
            raise RevokedError(
                f"The {what} {_name(cert.subject)} was revoked by {_name(issuer.subject)} on "
                f"{revoked.revocation_date_utc:%Y-%m-%d}; everything it signs is refused.",
                reason="revoked",
            )


def _verify_crls(
    issuer: x509.Certificate, named: Sequence[x509.CertificateRevocationList]
) -> tuple[x509.CertificateRevocationList, ...]:
    # RFC 5280 §6.3.3 (f): the CRL issuer must hold cRLSign, and the CRL signature must verify
    # with its key; a CRL that fails either is ignored (and, if none is left, fails closed).
    usage = _key_usage(issuer)
    issuer_key = issuer.public_key()
    if usage is None or not usage.crl_sign or not isinstance(issuer_key, _SIGNING_KEYS):
        return ()
    valid: list[x509.CertificateRevocationList] = []
    for crl in named:
        try:
            if crl.is_signature_valid(issuer_key):
                valid.append(crl)
        except (TypeError, UnsupportedAlgorithm):
            continue
    return tuple(valid)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        msg = "now must be timezone-aware (UTC)"
        raise ValueError(msg)


def _single(cert: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise MalformedError(
            f"Certificate {_name(cert.subject)} is not a device certificate: it needs exactly "
            f"one {what} in its subject.",
            reason="not-device-cert",
        )
    return values[0].value


def _identity(path: Sequence[x509.Certificate]) -> DeviceIdentity:
    leaf, root = path[0], path[-1]
    device_id = _single(leaf, NameOID.COMMON_NAME, "common name (device id)")
    udi_text = _single(leaf, NameOID.SERIAL_NUMBER, "serialNumber (UDI)")
    manufacturer = _single(leaf, NameOID.ORGANIZATION_NAME, "organisation (manufacturer)")
    by_cn = Udi.from_device_id(device_id)
    udi = Udi.parse(udi_text)
    if udi.device_id != by_cn.device_id:
        raise MismatchError(
            f"Device certificate CN {device_id} does not match its UDI {udi.canonical}; the "
            "certificate names two different devices.",
            reason="cn-udi-mismatch",
        )
    root_org = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not root_org or root_org[0].value != manufacturer:
        raise MismatchError(
            f"Device certificate {device_id} names manufacturer {manufacturer!r}, but it "
            f"chains to the root of {_name(root.subject)}.",
            reason="manufacturer-mismatch",
        )
    key = leaf.public_key()
    assert isinstance(key, (Ed25519PublicKey, EllipticCurvePublicKey))  # step 4 checked it
    return DeviceIdentity(
        device_id=device_id,
        manufacturer=manufacturer,
        udi=udi,
        public_key=key,
        kid=kid_for(key),
        certificate=leaf,
        issuers=tuple(path[1:]),
    )


def _name(name: x509.Name) -> str:
    return f"'{name.rfc4514_string()}'"
