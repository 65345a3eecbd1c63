"""GS1 Unique Device Identifiers (UDI): parsing, the canonical form, device ids and pseudonyms.

A UDI is a GS1 element string: ``(01)`` the device identifier (GTIN-14) plus production
identifiers, of which ``(21)`` serial makes it name one physical device (FDA 21 CFR 801.20, GS1
General Specifications §3.2). We accept every form a barcode scanner or a label gives:

* HRI with parentheses: ``(01)09506000134352(17)270131(10)L42(21)SN0001``;
* raw element strings with FNC1 as ASCII GS (0x1D) after variable-length fields, optionally
  behind a symbology identifier (``]d2`` GS1 DataMatrix, ``]C1`` GS1-128, ``]Q3`` GS1 QR);
* a GS1 Digital Link URI: ``https://id.gs1.org/01/09506000134352/21/SN0001``.

The **canonical** form is the HRI with the AIs we keep, in AI order (01, 10, 17, 21). The
**device id** ``{gtin14}-{serial}`` is topic-safe and is the MQTT username and certificate CN.
On the ledger a device appears only as :func:`pseudonym`, an HMAC of the canonical UDI under the
consortium key, so the serial never leaves the gateway in clear (DESIGN.md, "Rule from the
domain").

``biip`` is imported only when a text needs it: its GS1 tables cost ~25 MB in every process
that imports it. The canonical form without expiry -- what device certificates carry, so what
every verifier reads -- is read by a strict pattern here; a test proves it gives biip's result.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from gateway.core.errors import MalformedError

if TYPE_CHECKING:
    from biip.gs1_messages import GS1Message

__all__ = ["Udi", "pseudonym"]

# Serial (AI 21) restricted to what is safe in an MQTT topic segment, a file name and an X.509
# PrintableString-or-UTF8 attribute; GS1 allows CSET 82 (GS1 Gen Specs §7.11), we allow a subset.
_SERIAL = re.compile(r"[A-Za-z0-9._-]{1,20}")
# Lot (AI 10): GS1 CSET 82, 1..20 characters, minus the parentheses that delimit AIs in HRI,
# so the canonical form always parses back to the same value.
_LOT = re.compile(r"[!\"%&'*+,\-./0-9:;<=>?A-Z_a-z]{1,20}")
_GTIN14 = re.compile(r"[0-9]{14}")
# AIs that may appear on a device label. (11) production date is read and dropped: it does not
# identify the device. Any other AI means the wrong barcode was scanned (SSCC, GLN, ...).
_KEPT_AIS = frozenset({"01", "10", "17", "21"})
_DROPPED_AIS = frozenset({"11"})
# Longest UDI text we look at; a real one is well under 100 characters.
_MAX_TEXT = 256
# :attr:`Udi.canonical` without (17): (01) GTIN, optional (10) lot, (21) serial. Neither lot nor
# serial characters include "(" or ")", so the match is unambiguous. (17) is left to biip: its
# two-digit year is read relative to the current year (GS1 Gen Specs §7.12), a clock read that
# the pure core does not make itself.
_CANONICAL = re.compile(
    r"\(01\)([0-9]{14})(?:\(10\)(" + _LOT.pattern + r"))?\(21\)(" + _SERIAL.pattern + r")"
)


def _gs1_check_digit(digits: str) -> int:
    """GS1 standard check digit of an ASCII digit string (GS1 Gen Specs §7.9.1)."""
    # Weights 3, 1, 3, ... from the rightmost digit.
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


@dataclass(frozen=True)
class Udi:
    """A device's UDI, checked on construction: valid GTIN-14 check digit and a topic-safe serial.

    Attributes:
        gtin: the 14-digit GTIN from AI (01), the UDI device identifier.
        serial: AI (21), 1..20 characters of ``[A-Za-z0-9._-]``.
        lot: AI (10), optional.
        expiry: AI (17), optional.

    """

    gtin: str
    serial: str
    lot: str | None = None
    expiry: date | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.gtin, str) or not _GTIN14.fullmatch(self.gtin):
            raise MalformedError(
                f"The UDI's GTIN {self.gtin!r} is not 14 digits.", reason="bad-udi"
            )
        expected = _gs1_check_digit(self.gtin[:-1])
        if int(self.gtin[-1]) != expected:
            raise MalformedError(
                f"The UDI's GTIN {self.gtin} has a wrong check digit (expected {expected}, "
                f"got {self.gtin[-1]}): the number was mistyped or misread.",
                reason="bad-udi",
            )
        if not isinstance(self.serial, str) or not _SERIAL.fullmatch(self.serial):
            raise MalformedError(
                f"The UDI's serial number {self.serial!r} must be 1 to 20 characters of "
                "letters, digits, '.', '_' or '-'.",
                reason="bad-udi",
            )
        if self.lot is not None and (not isinstance(self.lot, str) or not _LOT.fullmatch(self.lot)):
            raise MalformedError(
                f"The UDI's lot number {self.lot!r} must be 1 to 20 GS1 characters.",
                reason="bad-udi",
            )
        if self.expiry is not None and not isinstance(self.expiry, date):
            raise MalformedError("The UDI's expiry must be a date.", reason="bad-udi")

    @classmethod
    def parse(cls, text: str) -> Udi:
        """Parse a UDI in any form a scanner or label gives (see the module docstring).

        Raises:
            MalformedError: the text is not a GS1 UDI with (01) GTIN and (21) serial, a GTIN
                check digit is wrong, or an element is repeated or not a device-label AI.

        """
        if not isinstance(text, str) or len(text) > _MAX_TEXT:
            raise MalformedError("A UDI must be a short text.", reason="bad-udi")
        stripped = text.strip()
        # biip's HRI parser drops inner whitespace; a serial "A B" must not silently become "AB".
        # (GS, 0x1D, counts as whitespace for str.isspace but is the FNC1 separator we need.)
        if any(ch.isspace() and ch != "\x1d" for ch in stripped):
            raise MalformedError(
                f"The UDI {text!r} contains spaces; a UDI has none.", reason="bad-udi"
            )
        return _read_canonical(stripped) or cls._from_gs1(text, _parse_gs1(stripped))

    @classmethod
    def _from_gs1(cls, text: str, message: GS1Message) -> Udi:
        """Return the UDI of a message biip parsed from *text* (quoted in errors)."""
        values: dict[str, str] = {}
        expiry: date | None = None
        for element in message.element_strings:
            ai = element.ai.ai
            if ai in _DROPPED_AIS:
                continue
            if ai not in _KEPT_AIS:
                raise MalformedError(
                    f"The UDI {text!r} contains AI ({ai}) {element.ai.data_title}, which is not "
                    "part of a device label: was the wrong barcode scanned?",
                    reason="bad-udi",
                )
            if ai in values:
                raise MalformedError(
                    f"The UDI {text!r} contains AI ({ai}) twice.", reason="bad-udi"
                )
            if element.gtin_error:
                raise MalformedError(f"The UDI {text!r}: {element.gtin_error}", reason="bad-udi")
            values[ai] = element.value
            if ai == "17":
                expiry = element.date
        if "01" not in values or "21" not in values:
            raise MalformedError(
                f"The UDI {text!r} lacks a (01) GTIN or a (21) serial number; both are needed to "
                "name one device.",
                reason="bad-udi",
            )
        return cls(gtin=values["01"], serial=values["21"], lot=values.get("10"), expiry=expiry)

    @classmethod
    def from_device_id(cls, device_id: str) -> Udi:
        """Rebuild the (GTIN, serial) UDI from a device id ``{gtin14}-{serial}``.

        Raises:
            MalformedError: the text is not a device id.

        """
        if (
            not isinstance(device_id, str)
            or len(device_id) < 16
            or device_id[14] != "-"
            or not _GTIN14.fullmatch(device_id[:14])
        ):
            raise MalformedError(
                f"{device_id!r} is not a device id: expected a 14-digit GTIN, '-', and a serial.",
                reason="bad-device-id",
            )
        return cls(gtin=device_id[:14], serial=device_id[15:])

    @property
    def canonical(self) -> str:
        """The GS1 HRI with AIs in order: ``(01)GTIN(10)LOT(17)YYMMDD(21)SERIAL``."""
        parts = [f"(01){self.gtin}"]
        if self.lot is not None:
            parts.append(f"(10){self.lot}")
        if self.expiry is not None:
            parts.append(f"(17){self.expiry:%y%m%d}")
        parts.append(f"(21){self.serial}")
        return "".join(parts)

    @property
    def device_id(self) -> str:
        """The topic-safe device id ``{gtin14}-{serial}`` (MQTT username, certificate CN)."""
        return f"{self.gtin}-{self.serial}"


def pseudonym(consortium_key: bytes, udi: Udi) -> str:
    """Return the device's ledger pseudonym: HMAC-SHA256(consortium_key, canonical UDI) as hex.

    Keyed (RFC 2104) rather than a plain hash because GTINs and serials are guessable: without
    the consortium key nobody can test "is this the ledger entry of serial X?". The input is
    :attr:`Udi.canonical`, so a UDI parsed with a lot or expiry gives a different pseudonym
    from the bare (GTIN, serial) one; callers pseudonymise the UDI bound in the device
    certificate.
    """
    if len(consortium_key) < 16:
        msg = "the consortium key must be at least 16 bytes"
        raise ValueError(msg)
    return hmac.new(consortium_key, udi.canonical.encode("ascii"), hashlib.sha256).hexdigest()


def _read_canonical(text: str) -> Udi | None:
    """Read the canonical form without (17) without biip; None for any other text.

    Also None for a wrong GTIN check digit, so that biip's path words that error as always.
    """
    match = _CANONICAL.fullmatch(text)
    if match is None:
        return None
    gtin, lot, serial = match.groups()
    if int(gtin[-1]) != _gs1_check_digit(gtin[:-1]):
        return None
    return Udi(gtin=gtin, serial=serial, lot=lot)


def _parse_gs1(text: str) -> GS1Message:
    """Run biip on one of the accepted forms, mapping its errors to MalformedError."""
    # Here, not at the top: see the module docstring.
    import biip  # noqa: PLC0415
    from biip import ParseError  # noqa: PLC0415
    from biip.gs1_messages import GS1Message  # noqa: PLC0415

    try:
        if text.startswith("("):
            return GS1Message.parse_hri(text)
        result = biip.parse(text)
    except (ParseError, ValueError) as exc:
        raise MalformedError(f"{text!r} is not a GS1 UDI: {exc}", reason="bad-udi") from exc
    if result.gs1_message is not None:
        return result.gs1_message
    if result.gs1_digital_link_uri is not None:
        return result.gs1_digital_link_uri.as_gs1_message()
    detail = result.gs1_message_error or result.gs1_digital_link_uri_error or "unrecognised"
    raise MalformedError(f"{text!r} is not a GS1 UDI: {detail}", reason="bad-udi")
