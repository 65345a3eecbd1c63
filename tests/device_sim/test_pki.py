from __future__ import annotations

import json
import stat
from collections import Counter
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_sim.cli import cli
from device_sim.pki import (
    MANUFACTURERS,
    gtin14,
    init_pki,
    load_devices,
    revoke_device,
    revoke_issuing_ca,
)
from gateway.core.errors import RevokedError, UntrustedSignerError
from gateway.core.identity import verify_device_chain
from gateway.core.udi import Udi
from gateway.store.trust_files import load_trust_dir


def _chain(base, device_id) -> list[bytes]:
    pem = (base / "devices" / device_id / "chain.pem").read_bytes()
    return [cert.public_bytes(Encoding.DER) for cert in x509.load_pem_x509_certificates(pem)]


def _now():
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki") / "demo"
    init_pki(directory, devices_per_model=2)
    return directory


def test_init_writes_the_documented_layout(pki):
    slugs = {spec.slug for spec in MANUFACTURERS}
    trust_files = {p.name for p in (pki / "trust").iterdir()}
    expected_trust = {
        f"{s}.{suffix}" for s in slugs for suffix in ("root.pem", "root.crl.pem", "issuing.crl.pem")
    }
    assert trust_files == expected_trust  # only roots and CRLs: no intermediates, no keys
    for slug in slugs:
        for name in ("root.key.pem", "root.cert.pem", "issuing.key.pem", "issuing.cert.pem"):
            assert (pki / "manufacturers" / slug / name).is_file()
    for record in load_devices(pki):
        folder = pki / "devices" / record.id
        assert {p.name for p in folder.iterdir()} == {"key.pem", "cert.pem", "chain.pem"}
        assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    assert len(bytes.fromhex((pki / "consortium.key").read_text().strip())) == 32
    assert "TEST KEYS ONLY" in (pki / "README.txt").read_text()


def test_inventory_covers_three_kinds_several_makers_and_both_key_types(pki):
    records = load_devices(pki)
    assert len(records) == 2 * sum(len(spec.models) for spec in MANUFACTURERS)
    assert set(Counter(r.kind for r in records)) == {
        "infusion_pump",
        "patient_monitor",
        "ventilator",
    }
    assert len({r.manufacturer_slug for r in records}) >= 3
    assert {r.alg for r in records} == {"Ed25519", "P-256"}
    assert len({r.id for r in records}) == len(records)
    raw = json.loads((pki / "devices.json").read_text())
    assert set(raw[0]) == {
        "id", "manufacturer", "manufacturer_slug", "model", "kind", "udi", "gtin", "serial",
        "alg", "site", "department",
    }  # fmt: skip


def test_every_udi_is_valid_gs1_and_matches_the_device_id(pki):
    for record in load_devices(pki):
        udi = Udi.parse(record.udi)  # checks the GTIN check digit
        assert udi.device_id == record.id
        assert (udi.gtin, udi.serial) == (record.gtin, record.serial)


def test_every_device_chain_verifies_against_the_trust_dir(pki):
    trust = load_trust_dir(pki / "trust")
    for record in load_devices(pki):
        identity = verify_device_chain(_chain(pki, record.id), trust, _now())
        assert identity.device_id == record.id
        assert identity.manufacturer == record.manufacturer
        assert identity.udi.canonical == record.udi


def test_untrusted_manufacturers_device_is_refused(pki):
    trust = load_trust_dir(pki / "trust")
    (record,) = load_devices(pki / "untrusted")
    assert (pki / "untrusted" / "manufacturers" / record.manufacturer_slug).is_dir()
    with pytest.raises(UntrustedSignerError, match=record.manufacturer):
        verify_device_chain(_chain(pki / "untrusted", record.id), trust, _now())


def test_init_refuses_a_directory_that_is_not_empty(pki):
    with pytest.raises(FileExistsError):
        init_pki(pki, devices_per_model=1)


def test_gtin14_appends_the_gs1_check_digit():
    assert gtin14("9506000", "13435") == "09506000134352"  # GS1's example GTIN
    with pytest.raises(ValueError, match="13 digits"):
        gtin14("123", "45")


def test_revoking_a_device_refuses_only_that_device_and_is_idempotent(tmp_path):
    init_pki(tmp_path / "pki", devices_per_model=1)
    victim, bystander = load_devices(tmp_path / "pki")[:2]
    assert victim.manufacturer_slug == bystander.manufacturer_slug
    revoke_device(tmp_path / "pki", victim.id)
    crl_file = tmp_path / "pki" / "trust" / f"{victim.manufacturer_slug}.issuing.crl.pem"
    after_first = crl_file.read_bytes()
    revoke_device(tmp_path / "pki", victim.id)
    assert crl_file.read_bytes() == after_first

    trust = load_trust_dir(tmp_path / "pki" / "trust")
    with pytest.raises(RevokedError):
        verify_device_chain(_chain(tmp_path / "pki", victim.id), trust, _now())
    verify_device_chain(_chain(tmp_path / "pki", bystander.id), trust, _now())
    crl = x509.load_pem_x509_crl(after_first)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_revoking_an_issuing_ca_refuses_all_its_devices_and_no_others(tmp_path):
    base = tmp_path / "pki"
    records = init_pki(base, devices_per_model=1)
    revoke_issuing_ca(base, "borealis")
    trust = load_trust_dir(base / "trust")
    for record in records:
        if record.manufacturer_slug == "borealis":
            with pytest.raises(RevokedError, match="CA"):
                verify_device_chain(_chain(base, record.id), trust, _now())
        else:
            verify_device_chain(_chain(base, record.id), trust, _now())


def test_revoking_unknown_things_raises_key_error(pki):
    with pytest.raises(KeyError):
        revoke_device(pki, "09506000134352-NOPE")
    with pytest.raises(KeyError):
        revoke_issuing_ca(pki, "nope")


def test_cli_init_and_revoke(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        cli, ["pki", "init", str(tmp_path / "p"), "--devices-per-model", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["devices"] == len(load_devices(tmp_path / "p"))
    assert set(summary["kinds"]) == {"infusion_pump", "patient_monitor", "ventilator"}

    device_id = load_devices(tmp_path / "p")[0].id
    result = runner.invoke(cli, ["pki", "revoke", str(tmp_path / "p"), "--device", device_id])
    assert result.exit_code == 0, result.output
    assert device_id in result.output
    trust = load_trust_dir(tmp_path / "p" / "trust")
    with pytest.raises(RevokedError):
        verify_device_chain(_chain(tmp_path / "p", device_id), trust, _now())


def test_cli_refuses_misuse_with_exit_code_2(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["pki", "init", str(tmp_path / "p"), "-h"]).exit_code == 0
    runner.invoke(cli, ["pki", "init", str(tmp_path / "p"), "--devices-per-model", "1"])
    again = runner.invoke(cli, ["pki", "init", str(tmp_path / "p")])
    assert again.exit_code == 2
    assert "not empty" in again.output
    both = runner.invoke(
        cli, ["pki", "revoke", str(tmp_path / "p"), "--device", "x", "--issuing-ca", "y"]
    )
    assert both.exit_code == 2
    unknown = runner.invoke(cli, ["pki", "revoke", str(tmp_path / "p"), "--device", "nope"])
    assert unknown.exit_code == 2
    assert "no device" in unknown.output
