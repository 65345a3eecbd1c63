"""[log], [witnesses] and [chain] in gateway.toml: defaults, checks, the documented files, keys."""

from __future__ import annotations

import re
import tomllib
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from gateway.core import note
from gateway.core.errors import MalformedError
from gateway.ledger.keys import load_gateway_key
from gateway.service import ledger_service
from gateway.service.config import load_config
from gateway.service.ledger_service import LedgerService, load_ledger_keys, prepare_ledger
from gateway.store.witness import WitnessStore

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = "0x" + "ab" * 20


@pytest.fixture
def write_config(tmp_path, gateway_site):
    """`write(extra_toml)`: a complete gateway.toml for the session's site plus *extra_toml*."""

    def write(extra: str = "") -> Path:
        path = tmp_path / "gateway.toml"
        path.write_text(
            f'[broker]\nconfig_dir = "{gateway_site.config.directory}"\n'
            f'[trust]\ndir = "{gateway_site.pki / "trust"}"\n'
            '[store]\npath = "gateway.sqlite3"\n[ingest]\nworkers = 2\n' + extra,
            encoding="utf-8",
        )
        return path

    return write


def test_the_embedded_default_is_the_log_and_a_local_witness_without_chain(write_config, tmp_path):
    config = load_config(write_config())
    assert config.log.enabled is True
    assert config.log.key == tmp_path / "gateway-log.key"
    assert (config.log.interval_s, config.log.max_pending) == (2.0, 1000)  # issue 5 defaults
    assert config.witnesses.embedded is True
    assert (config.witnesses.count, config.witnesses.quorum) == (1, 1)
    assert config.chain.enabled is False


def test_first_start_generates_the_keys_once_and_later_starts_load_them(write_config, tmp_path):
    config = load_config(write_config())
    first = prepare_ledger(config)
    assert first.generated == (tmp_path / "gateway-log.key", tmp_path / "witness.key")
    assert first.gateway.origin == "provgw.local/log"
    assert first.witness is not None
    assert first.witness.verifier.sig_type == note.COSIGNATURE_V1
    assert (tmp_path / "gateway-log.key").stat().st_mode & 0o077 == 0  # owner only
    again = prepare_ledger(config)
    assert again.generated == ()
    assert again.gateway.verifier == first.gateway.verifier
    assert again.witness.verifier == first.witness.verifier
    assert load_ledger_keys(config).gateway.verifier == first.gateway.verifier
    status = again.status(config)
    assert status["keys_generated"] == []
    assert status["log_vkey"] == load_gateway_key(tmp_path / "gateway-log.key").verifier.vkey


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("[witnesses]\nquorum = 2\n", "witnesses.quorum is 2, but 1 witnesses"),
        ("[witnesses]\nembedded = false\nquorum = 1\n", "but 0 witnesses"),
        ("[log]\ninterval_s = 0\n", "log.interval_s must be above 0"),
        ("[log]\nmax_pending = 0\n", "log.max_pending must be between"),
        ('[log]\ninterval_s = "2"\n', "log.interval_s must be a number"),
        (
            '[witnesses]\nremote = [{ url = "http://w.example", vkey = "LOGKEY" }]\n',
            "not a witness cosigning key",
        ),
        (
            '[witnesses]\nremote = [{ url = "ftp://w.example", vkey = "WITNESSKEY" }]\n',
            "must be an http:// or https:// URL",
        ),
        ('[witnesses]\nremote = [{ url = "http://w.example" }]\n', "exactly url and vkey"),
        ("[chain]\nenabled = true\nrpc_url = 'http://127.0.0.1:8545'\n", "provgw chain deploy"),
        ("[chain]\nenabled = true\ncontract = 'CONTRACT'\n", "chain.rpc_url must be an http"),
        (
            "[chain]\nenabled = true\nrpc_url = 'http://n:8545'\ncontract = 'CONTRACT'\n",
            "chain key file",
        ),
    ],
)
def test_bad_ledger_settings_are_refused_saying_what_to_fix(write_config, extra, says):
    log_key = note.Signer.generate("log.example/log").verifier.vkey
    witness_key = note.Signer.generate("w.example/w1", note.COSIGNATURE_V1).verifier.vkey
    extra = extra.replace("WITNESSKEY", witness_key).replace("LOGKEY", log_key)
    with pytest.raises(MalformedError, match=re.escape(says)):
        load_config(write_config(extra.replace("CONTRACT", CONTRACT)))


def test_remote_witnesses_count_towards_the_quorum(write_config):
    keys = [note.Signer.generate(f"w{i}.example/w", note.COSIGNATURE_V1) for i in range(2)]
    remote = ", ".join(
        f'{{ url = "http://127.0.0.1:{7380 + i}", vkey = "{k.verifier.vkey}" }}'
        for i, k in enumerate(keys)
    )
    config = load_config(write_config(f"[witnesses]\nquorum = 3\nremote = [{remote}]\n"))
    assert config.witnesses.count == 3
    assert [w.verifier for w in config.witnesses.remote] == [k.verifier for k in keys]


def test_chain_settings_come_from_the_file_and_the_environment_overrides_them(
    write_config, tmp_path, monkeypatch
):
    (tmp_path / "chain.key").write_text("11" * 32, encoding="ascii")
    path = write_config(
        "[chain]\nenabled = true\nrpc_url = 'http://file:8545'\n"
        f"contract = '{CONTRACT}'\nmin_growth = 10\nsupersede = false\n"
    )
    config = load_config(path)
    assert (config.chain.rpc_url, config.chain.contract) == ("http://file:8545", CONTRACT)
    assert config.chain.key_file == tmp_path / "chain.key"
    assert (config.chain.min_growth, config.chain.supersede) == (10, False)
    other = tmp_path / "secret.key"
    other.write_text("22" * 32, encoding="ascii")
    monkeypatch.setenv("PROVGW_CHAIN_URL", "http://env:8545")
    monkeypatch.setenv("PROVGW_CHAIN_CONTRACT", "0x" + "cd" * 20)
    monkeypatch.setenv("PROVGW_CHAIN_KEY_FILE", str(other))
    config = load_config(path)
    assert (config.chain.rpc_url, config.chain.contract) == ("http://env:8545", "0x" + "cd" * 20)
    assert config.chain.key_file == other


def _ledger_sections(path: Path) -> str:
    """The [log], [witnesses] and [chain] sections of a shipped TOML file, as TOML text."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    lines = []
    for section in ("log", "witnesses", "chain"):
        lines.append(f"[{section}]")
        for key, value in data[section].items():
            lines.append(f"{key} = {value!r}".replace("True", "true").replace("False", "false"))
    return "\n".join(lines).replace("'", '"') + "\n"


def test_every_ledger_key_in_gateway_example_toml_is_read(write_config, tmp_path):
    text = _ledger_sections(ROOT / "gateway.example.toml")
    config = load_config(write_config(text))
    example = tomllib.loads((ROOT / "gateway.example.toml").read_text(encoding="utf-8"))
    assert config.log.key == tmp_path / example["log"]["key"]
    assert config.log.interval_s == example["log"]["interval_s"]
    assert config.witnesses.embedded_db == tmp_path / example["witnesses"]["embedded_db"]
    assert config.chain.name == example["chain"]["name"]
    assert config.chain.min_growth == example["chain"]["min_growth"]


def test_docker_compose_gateway_serves_gateway_compose_toml_with_its_chain_environment(
    write_config, tmp_path, monkeypatch
):
    gateway = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"]
    command = " ".join(gateway["command"])
    assert "provgw serve --config /src/gateway.compose.toml" in command
    env = gateway["environment"]
    assert set(env) == {"PROVGW_CHAIN_URL", "PROVGW_CHAIN_CONTRACT", "PROVGW_CHAIN_KEY_FILE"}
    # The compose file's configuration, with the variables compose sets, loads as intended.
    key_file = tmp_path / "chain_key"
    key_file.write_text("33" * 32, encoding="ascii")
    monkeypatch.setenv("PROVGW_CHAIN_URL", env["PROVGW_CHAIN_URL"])
    monkeypatch.setenv("PROVGW_CHAIN_CONTRACT", CONTRACT)
    monkeypatch.setenv("PROVGW_CHAIN_KEY_FILE", str(key_file))
    config = load_config(write_config(_ledger_sections(ROOT / "gateway.compose.toml")))
    assert config.chain.enabled is True
    assert config.chain.rpc_url == env["PROVGW_CHAIN_URL"]
    assert config.chain.contract == CONTRACT
    assert config.log.key == Path("/data/gateway-log.key")
    assert config.witnesses.embedded_db == Path("/data/witness.sqlite3")


def test_the_log_and_its_witness_always_fsync_whatever_ingest_is_set_to(write_config, monkeypatch):
    # [store] durable_against_power_loss = false (the default) lets a power cut take back the
    # last ingest commits; never a checkpoint the witnesses were given (a fork on restart).
    config = load_config(write_config())
    assert config.durable_against_power_loss is False
    opened: list[list[tuple[int]]] = []

    class SpiedWitnessStore(WitnessStore):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            opened.append(self.query("PRAGMA synchronous"))

    monkeypatch.setattr(ledger_service, "WitnessStore", SpiedWitnessStore)
    service = LedgerService(config, prepare_ledger(config))
    with ExitStack() as stack:
        assert service._open_db(stack).query("PRAGMA synchronous") == [(2,)]  # FULL
        service._witness_clients(stack)  # starts the embedded witness, on its own store
        assert opened == [[(2,)]]
