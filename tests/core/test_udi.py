from __future__ import annotations

import subprocess
import sys
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import udi as udi_module
from gateway.core.errors import MalformedError
from gateway.core.udi import Udi, pseudonym

GTIN = "09506000134352"  # GS1's own example GTIN, valid check digit
GS = "\x1d"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(01)09506000134352(21)SN0001", Udi(GTIN, "SN0001")),
        ("  (01)09506000134352(21)SN0001\n", Udi(GTIN, "SN0001")),
        # raw element string: (01) is fixed length, so no separator before (21)
        ("010950600013435221SN0001", Udi(GTIN, "SN0001")),
        # GS1 DataMatrix scan: symbology id, FNC1 as GS after the variable-length lot
        (
            "]d201095060001343521727013110L42" + GS + "21SN0001",
            Udi(GTIN, "SN0001", lot="L42", expiry=date(2027, 1, 31)),
        ),
        # HRI in label order (serial before lot) still gives the same UDI
        (
            "(01)09506000134352(21)SN0001(10)L42(17)270131",
            Udi(GTIN, "SN0001", lot="L42", expiry=date(2027, 1, 31)),
        ),
        ("https://id.gs1.org/01/09506000134352/21/SN0001", Udi(GTIN, "SN0001")),
        # (11) production date is read and dropped: it does not identify the device
        ("(01)09506000134352(11)240115(21)SN0001", Udi(GTIN, "SN0001")),
    ],
)
def test_every_scanner_form_parses_to_the_same_udi(text, expected):
    assert Udi.parse(text) == expected


def test_canonical_form_lists_ais_in_ai_order():
    udi = Udi.parse("(21)SN0001(17)270131(01)09506000134352(10)L42")
    assert udi.canonical == "(01)09506000134352(10)L42(17)270131(21)SN0001"
    assert Udi.parse(udi.canonical) == udi


def test_expiry_day_zero_means_last_day_of_month():
    # GS1 Gen Specs §3.4.5: day "00" in (17) means the last day of that month.
    udi = Udi.parse("(01)09506000134352(17)280200(21)X1")
    assert udi.expiry == date(2028, 2, 29)
    assert udi.canonical == "(01)09506000134352(17)280229(21)X1"


def test_device_id_round_trips_through_from_device_id():
    udi = Udi.parse("(01)09506000134352(10)L42(21)SN-0001.a_b")
    assert udi.device_id == "09506000134352-SN-0001.a_b"
    assert Udi.from_device_id(udi.device_id) == Udi(GTIN, "SN-0001.a_b")


def test_bad_gtin_check_digit_is_refused_with_a_clear_sentence():
    with pytest.raises(MalformedError, match="check digit") as info:
        Udi.parse("(01)09506000134353(21)SN0001")
    assert info.value.reason == "bad-udi"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("(01)09506000134352", "serial"),
        ("(21)SN0001", "GTIN"),
        ("(01)09506000134352(21)SN/0001", "serial number"),
        ("(01)09506000134352(21)SN 0001", "spaces"),
        ("(01)09506000134352(21)A(21)B", "twice"),
        ("(00)106141411234567897", "wrong barcode"),
        ("(01)09506000134352(17)271341(21)SN0001", "not a GS1 UDI"),
        ("(01)0950600013435(21)SN0001", "not a GS1 UDI"),
        ("hello world", "spaces"),
        ("hello", "not a GS1 UDI"),
        ("(01)09506000134352(21)" + "X" * 300, "short text"),
        ("(01)09506000134352(21)ABCDEFGHIJKLMNOPQRSTU", "not a GS1 UDI"),
    ],
)
def test_malformed_udis_are_refused(text, needle):
    with pytest.raises(MalformedError, match=needle):
        Udi.parse(text)


@pytest.mark.parametrize(
    "device_id", ["", "09506000134352", "09506000134352_SN1", "0950600013435X-SN1", "0950-SN1"]
)
def test_text_that_is_not_a_device_id_is_refused(device_id):
    with pytest.raises(MalformedError, match="not a device id"):
        Udi.from_device_id(device_id)


def test_device_id_with_bad_check_digit_is_refused():
    with pytest.raises(MalformedError, match="check digit"):
        Udi.from_device_id("09506000134353-SN1")


def test_constructing_an_invalid_udi_fails():
    with pytest.raises(MalformedError, match="14 digits"):
        Udi("9506000134352", "SN1")
    with pytest.raises(MalformedError, match="lot"):
        Udi(GTIN, "SN1", lot="L(1)")


def test_pseudonym_is_a_pinned_hmac_sha256_of_the_canonical_udi():
    key = bytes(range(32))
    udi = Udi(GTIN, "SN0001")
    expected = "3d79702983cc517e4c61708b7bf2f1ff937ff73dd0551a3891b5cf5c9ae7ea73"
    assert pseudonym(key, udi) == expected
    # the same device scanned in another form gives the same pseudonym
    assert pseudonym(key, Udi.parse("010950600013435221SN0001")) == expected


def test_pseudonym_depends_on_the_key_and_the_device():
    udi = Udi(GTIN, "SN0001")
    assert pseudonym(b"k" * 32, udi) != pseudonym(b"K" * 32, udi)
    assert pseudonym(b"k" * 32, udi) != pseudonym(b"k" * 32, Udi(GTIN, "SN0002"))


def test_pseudonym_refuses_a_short_key():
    with pytest.raises(ValueError, match="16 bytes"):
        pseudonym(b"short", Udi(GTIN, "SN0001"))


def _with_check_digit(body: str) -> str:
    # GS1 Gen Specs §7.9.1, written out independently of biip: weights 3,1,3,... from the right.
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


_gtins = st.text("0123456789", min_size=13, max_size=13).map(_with_check_digit)
_serials = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=20
)
_lots = st.none() | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-./", min_size=1, max_size=20)
_expiries = st.none() | st.dates(min_value=date(2000, 1, 1), max_value=date(2049, 12, 31))


@given(gtin=_gtins, serial=_serials, lot=_lots, expiry=_expiries)
def test_canonical_form_always_parses_back_to_the_same_udi(gtin, serial, lot, expiry):
    udi = Udi(gtin, serial, lot=lot, expiry=expiry)
    assert Udi.parse(udi.canonical) == udi
    assert Udi.from_device_id(udi.device_id) == Udi(gtin, serial)


# --- the canonical form without biip --------------------------------------------------------

# Lots of every character the canonical form allows (GS1 CSET 82 minus the parentheses).
_CSET82_NO_PARENS = (
    "!\"%&'*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
_any_lots = st.none() | st.text(_CSET82_NO_PARENS, min_size=1, max_size=20)


def _via_biip(text: str) -> Udi:
    return Udi._from_gs1(text, udi_module._parse_gs1(text))


@given(gtin=_gtins, serial=_serials, lot=_any_lots)
def test_canonical_form_read_without_biip_is_what_biip_reads(gtin, serial, lot):
    text = Udi(gtin, serial, lot=lot).canonical
    assert udi_module._read_canonical(text) is not None
    assert Udi.parse(text) == _via_biip(text)


@given(digits=st.text("0123456789", min_size=14, max_size=14), serial=_serials)
def test_canonical_form_with_any_gtin_gets_biips_verdict(digits, serial):
    # A wrong check digit must leave the fast path, so the error is biip's as before.
    text = f"(01){digits}(21){serial}"
    try:
        expected: Udi | str = _via_biip(text)
    except MalformedError as err:
        expected = err.message
    try:
        got: Udi | str = Udi.parse(text)
    except MalformedError as err:
        got = err.message
    assert got == expected


@pytest.mark.parametrize(
    "text",
    [
        "(01)00000000000000(21)A",  # all zeros: a valid check digit
        "(01)09506000134352(10)L42(17)270131(21)SN1",  # (17): biip's
        "(01)09506000134352(21)SN1(10)L42",  # not in AI order: biip's
        "(01)09506000134352(10)L(42)(21)SN1",
    ],
)
def test_near_canonical_forms_get_biips_verdict(text):
    try:
        expected: Udi | str = _via_biip(text)
    except MalformedError as err:
        expected = err.message
    try:
        got: Udi | str = Udi.parse(text)
    except MalformedError as err:
        got = err.message
    assert got == expected


def test_verifying_a_device_chain_does_not_import_biip():
    # biip's GS1 tables are ~25 MB per process; every verifier process imports the core.
    code = (
        "import sys\n"
        "from gateway.core.messages import verify_device_message\n"
        "from gateway.core.udi import Udi\n"
        "Udi.parse('(01)09506000134352(10)L42(21)SN1')\n"
        "Udi.from_device_id('09506000134352-SN1')\n"
        "assert 'biip' not in sys.modules, 'biip was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
