from __future__ import annotations

import stat

import pytest

from gateway.ledger.keys import GatewayKey, load_gateway_key, write_gateway_key, write_secret_file


def test_secret_file_is_created_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "secret.key"
    write_secret_file(path, b"PRIVATE+KEY+x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"PRIVATE+KEY+x\n"


def test_existing_secret_file_is_never_overwritten(tmp_path):
    path = tmp_path / "secret.key"
    path.write_bytes(b"the key devices trust\n")
    with pytest.raises(FileExistsError):
        write_secret_file(path, b"another key\n")
    assert path.read_bytes() == b"the key devices trust\n"


def test_gateway_key_written_once_reads_back_as_the_same_key(tmp_path):
    path = tmp_path / "log.key"
    key = GatewayKey.generate("gw.example/log")
    write_gateway_key(path, key)
    assert load_gateway_key(path).verifier.vkey == key.verifier.vkey
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_gateway_key(path, GatewayKey.generate("gw.example/log"))
