"""gateway.toml defaults: a key left out means the dataclass default, stated once."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from gateway.core.errors import MalformedError
from gateway.service.config import (
    BrokerSettings,
    ChainSettings,
    GatewayConfig,
    IngestSettings,
    LogSettings,
    UrgentSettings,
    WitnessSettings,
    load_config,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def write_config(tmp_path, gateway_site, monkeypatch):
    # The chain keys may come from the environment (docker-compose); a test of defaults must
    # not see a developer's.
    for variable in ("PROVGW_CHAIN_URL", "PROVGW_CHAIN_CONTRACT", "PROVGW_CHAIN_KEY_FILE"):
        monkeypatch.delenv(variable, raising=False)

    def write(broker: str = "", ingest: str = "") -> GatewayConfig:
        path = tmp_path / "gateway.toml"
        path.write_text(
            f'[broker]\nconfig_dir = "{gateway_site.config.directory}"\n{broker}'
            f'[trust]\ndir = "{gateway_site.pki / "trust"}"\n'
            f'[store]\npath = "gateway.sqlite3"\n[ingest]\nworkers = 2\n{ingest}',
            encoding="utf-8",
        )
        return load_config(path)

    return write


def _resolved(settings, base: Path):
    """*settings* with each relative Path default resolved against *base*, as the loader does."""
    changes = {
        f.name: base / getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if isinstance(getattr(settings, f.name), Path)
    }
    return dataclasses.replace(settings, **changes)


def test_sections_left_out_load_as_the_dataclass_defaults(write_config, tmp_path):
    config = write_config()
    assert config.log == _resolved(LogSettings(), tmp_path)
    assert config.witnesses == _resolved(WitnessSettings(), tmp_path)
    assert config.chain == _resolved(ChainSettings(), tmp_path)
    assert config.urgent == _resolved(UrgentSettings(), tmp_path)
    assert config.durable_against_power_loss is GatewayConfig.durable_against_power_loss


def test_broker_and_ingest_keys_left_out_load_as_the_dataclass_defaults(write_config):
    config = write_config()
    assert config.ingest == IngestSettings(workers=2)
    assert config.broker == BrokerSettings(
        host=config.broker.host, port=config.broker.port, config_dir=config.broker.config_dir
    )


def test_receive_maximum_defaults_to_two_batches_of_the_configured_batch_size(write_config):
    config = write_config(ingest="batch_max = 2000\n")
    assert config.broker.receive_maximum == 4000  # one batch committing while the next fills


def test_an_explicit_receive_maximum_wins_over_the_derived_default(write_config):
    config = write_config(broker="receive_maximum = 300\n", ingest="batch_max = 2000\n")
    assert config.broker.receive_maximum == 300


def test_the_receivers_byte_budget_is_at_least_one_mebibyte(write_config):
    assert write_config(ingest="in_flight_mb = 1\n").ingest.in_flight_mb == 1
    with pytest.raises(MalformedError, match="in_flight_mb"):
        write_config(ingest="in_flight_mb = 0\n")


def test_the_example_file_states_the_defaults(write_config):
    example = tomllib.loads((ROOT / "gateway.example.toml").read_text(encoding="utf-8"))
    defaults = write_config()
    assert example["ingest"]["batch_max"] == defaults.ingest.batch_max
    assert example["ingest"]["in_flight_mb"] == defaults.ingest.in_flight_mb
    assert example["broker"]["receive_maximum"] == defaults.broker.receive_maximum
    assert example["urgent"]["receive_maximum"] == defaults.urgent.receive_maximum


def test_only_shared_mode_is_warned_of(write_config):
    assert write_config().warnings() == []
    (warning,) = write_config(ingest='mode = "shared"\n').warnings()
    assert warning["reason"] == "shared-mode-restart-loss"
    assert '"partitioned"' in warning["message"]  # what to do instead
