"""docker-compose.yml (Besu QBFT for users) is parsed and checked here; it is not run in tests."""

from __future__ import annotations

import json
from pathlib import Path

import rlp
import yaml
from eth_keys import keys

from gateway.ledger.anchor import ARTIFACT_DIR
from gateway.service.workers import STOP_TIMEOUT_S
from tests._helpers import unit_settings

ROOT = Path(__file__).resolve().parents[2]
BESU = ARTIFACT_DIR / "besu"
VALIDATORS = [f"validator{i}" for i in range(1, 5)]


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _genesis():
    return json.loads((BESU / "genesis.json").read_text())


def _key(name):
    return keys.PrivateKey(bytes.fromhex((BESU / "keys" / f"{name}.key").read_text()[2:].strip()))


def test_compose_runs_four_besu_validators_and_the_gateway():
    services = _compose()["services"]
    assert set(services) == {*VALIDATORS, "gateway"}
    for name in VALIDATORS:
        service = services[name]
        image, _, tag = service["image"].partition(":")
        assert image == "hyperledger/besu"
        assert tag
        assert tag != "latest"  # pinned
        assert f"--node-private-key-file=/config/keys/{name}.key" in service["command"]
        assert "./contracts/besu/genesis.json:/config/genesis.json:ro" in service["volumes"]
        env = service["environment"]
        assert env["BESU_GENESIS_FILE"] == "/config/genesis.json"
        assert env["BESU_MIN_GAS_PRICE"] == "0"
        assert "ETH" in env["BESU_RPC_HTTP_API"].split(",")
    assert set(services["gateway"]["depends_on"]) == set(VALIDATORS)


def test_the_gateway_container_is_given_the_time_a_clean_stop_takes():
    gateway = _compose()["services"]["gateway"]
    # provgw serve is PID 1 (exec), so `docker stop`'s SIGTERM reaches the supervisor.
    assert "exec provgw serve" in gateway["command"][-1]
    grace = gateway["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) == float(unit_settings()["TimeoutStopSec"][-1])
    assert float(grace[:-1]) > STOP_TIMEOUT_S


def test_only_loopback_rpc_is_published():
    services = _compose()["services"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published == ["127.0.0.1:8545:8545"]


def test_genesis_is_qbft_on_london_with_the_four_validator_keys():
    genesis = _genesis()
    config = genesis["config"]
    assert config["londonBlock"] == 0
    assert "qbft" in config
    # The contract is built for london (contracts/build.mjs): no later fork, so no PUSH0.
    assert not {"shanghaiTime", "cancunTime", "pragueTime"} & set(config)
    vanity, validators, vote, round_, seals = rlp.decode(bytes.fromhex(genesis["extraData"][2:]))
    assert vanity == b"\0" * 32
    assert (vote, round_, seals) == ([], b"", [])
    assert validators == [_key(name).public_key.to_canonical_address() for name in VALIDATORS]


def test_bootnode_is_validator1_at_its_static_address():
    compose = _compose()
    services = compose["services"]
    enode = services["validator2"]["environment"]["BESU_BOOTNODES"]
    pubkey, _, host = enode.removeprefix("enode://").partition("@")
    assert pubkey == _key("validator1").public_key.to_hex()[2:]
    ip = services["validator1"]["networks"]["chain"]["ipv4_address"]
    assert host == f"{ip}:30303"
    assert services["gateway"]["environment"]["PROVGW_CHAIN_URL"] == f"http://{ip}:8545"


def test_gateway_chain_key_comes_from_a_secret_not_the_compose_file():
    gateway = _compose()["services"]["gateway"]
    assert gateway["secrets"] == ["chain_key"]
    assert gateway["environment"]["PROVGW_CHAIN_KEY_FILE"] == "/run/secrets/chain_key"
    assert not any("PRIVATE" in str(v).upper() for v in gateway["environment"].values())
