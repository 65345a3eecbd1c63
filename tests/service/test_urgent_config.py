"""`[urgent]` in gateway.toml, and the offer key `provgw serve` prepares at first start."""

from __future__ import annotations

import dataclasses
import json
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.core.errors import MalformedError
from gateway.core.identity import kid_for
from gateway.ledger.keys import load_gateway_key
from gateway.service.config import UrgentSettings, load_config
from gateway.service.urgent import load_offer_key, prepare_offer_key


@pytest.fixture
def write_config(broker_config, tmp_path):
    def write(urgent: str = "") -> object:
        path = tmp_path / "gateway.toml"
        path.write_text(
            f'[broker]\nconfig_dir = "{broker_config.config.directory}"\n'
            f'[trust]\ndir = "{broker_config.pki / "trust"}"\n'
            '[store]\npath = "gateway.sqlite3"\n[ingest]\nworkers = 1\n' + urgent,
            encoding="utf-8",
        )
        return load_config(path)

    return write


def test_urgent_lane_is_on_by_default_trusting_nobody_until_configured(write_config):
    urgent = write_config().urgent
    assert urgent.enabled is True
    assert urgent.offer_key is None  # the gateway log key signs offers
    assert urgent.manifest_trust is None
    assert urgent.recall_trust is None
    assert urgent.nice == -10


def test_missing_manufacturer_key_directory_is_a_configuration_error(write_config, tmp_path):
    with pytest.raises(MalformedError) as err:
        write_config(f'[urgent]\nmanifest_trust = "{tmp_path / "nowhere"}"\n')
    assert err.value.reason == "trust-dir-missing"
    assert "urgent.manifest_trust" in str(err.value)


@pytest.mark.parametrize(
    "line",
    ["retry_backoff = 0.5", "retry_timeout_s = 0", "nice = -21", "tick_s = true", "enabled = 1"],
)
def test_bad_urgent_values_are_refused(write_config, line):
    with pytest.raises(MalformedError) as err:
        write_config(f"[urgent]\n{line}\n")
    assert err.value.reason == "bad-config"


def test_offer_key_is_the_gateway_log_key_made_at_first_start(write_config):
    config = write_config()
    first = prepare_offer_key(config)
    assert first.generated is True
    assert first.path == config.log.key
    assert kid_for(load_gateway_key(config.log.key).public_key) == first.kid
    again = prepare_offer_key(config)
    assert again.generated is False
    assert again.kid == first.kid == load_offer_key(config).kid
    # The public half devices are provisioned with.
    public = load_pem_public_key(config.urgent.offer_public_key.read_bytes())
    assert kid_for(public) == first.kid


def test_own_offer_key_file_is_generated_once_private_to_its_owner(write_config, tmp_path):
    config = write_config('[urgent]\noffer_key = "offer.pem"\n')
    made = prepare_offer_key(config)
    assert made.generated is True
    assert made.path == tmp_path / "offer.pem"
    assert isinstance(made.private_key, Ed25519PrivateKey)
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600
    assert not config.log.key.exists()  # the log key is not involved
    assert prepare_offer_key(config).kid == made.kid  # never overwritten
    assert load_offer_key(config).generated is False


def test_unusable_offer_key_file_is_refused(write_config, tmp_path):
    (tmp_path / "offer.pem").write_text("not a key", encoding="ascii")
    config = write_config('[urgent]\noffer_key = "offer.pem"\n')
    with pytest.raises(MalformedError) as err:
        load_offer_key(config)
    assert err.value.reason == "bad-key"


def test_every_urgent_key_in_gateway_example_toml_is_read(write_config):
    root = Path(__file__).resolve().parents[2]
    example = tomllib.loads((root / "gateway.example.toml").read_text(encoding="utf-8"))
    table = example["urgent"]
    assert set(table) == {f.name for f in dataclasses.fields(UrgentSettings)} - {"offer_key"}
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    lines = lines.replace('"firmware_manifests/', f'"{root}/firmware_manifests/')
    urgent = write_config("[urgent]\n" + lines).urgent
    assert urgent.manifest_trust == root / "firmware_manifests" / "trust"
    assert urgent.retry_max_attempts == table["retry_max_attempts"]
    assert urgent.nice == table["nice"]
