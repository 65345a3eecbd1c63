from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from device_sim.pki import make_crl, make_issuing_ca, make_root_ca
from gateway.core.errors import MalformedError, PolicyError
from gateway.store.trust_files import TrustFolder, load_trust_dir

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def root():
    return make_root_ca("Acme Infusion Systems", alg="Ed25519", now=NOW)


def test_roots_and_crls_are_loaded(tmp_path, root):
    (tmp_path / "acme.root.pem").write_bytes(root.cert.public_bytes(Encoding.PEM))
    crl = make_crl(root, [(42, NOW)], now=NOW, number=1)
    (tmp_path / "acme.root.crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    (tmp_path / "notes.txt").write_text("ignored: not a .pem")
    store = load_trust_dir(tmp_path)
    assert store.roots == (root.cert,)
    assert store.crls_by(root.cert.subject) == (crl,)
    assert store.verified_crls(root.cert) == (crl,)


def test_directory_without_a_root_is_refused(tmp_path):
    with pytest.raises(MalformedError, match="no root certificate"):
        load_trust_dir(tmp_path)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(MalformedError, match="is not a directory"):
        load_trust_dir(tmp_path / "absent")


def test_bad_file_is_named_in_the_error(tmp_path, root):
    (tmp_path / "acme.root.pem").write_bytes(root.cert.public_bytes(Encoding.PEM))
    (tmp_path / "broken.crl.pem").write_bytes(b"garbage")
    with pytest.raises(MalformedError, match=r"broken\.crl\.pem"):
        load_trust_dir(tmp_path)


def test_intermediate_in_the_trust_dir_is_refused_as_anchor(tmp_path, root):
    issuing = make_issuing_ca(root, alg="Ed25519", now=NOW)
    (tmp_path / "acme.issuing.pem").write_bytes(issuing.cert.public_bytes(Encoding.PEM))
    with pytest.raises(PolicyError, match=r"acme\.issuing\.pem"):
        load_trust_dir(tmp_path)


def test_a_trust_folder_is_read_again_when_its_files_change(tmp_path, root, caplog):
    (tmp_path / "acme.root.pem").write_bytes(root.cert.public_bytes(Encoding.PEM))
    folder = TrustFolder(tmp_path, every_s=0.0)
    first = folder.store
    assert folder.changed() is None  # nothing changed
    other = make_root_ca("Borealis Medical", alg="P-256", now=NOW)
    (tmp_path / "borealis.root.pem").write_bytes(other.cert.public_bytes(Encoding.PEM))
    with caplog.at_level(logging.INFO, logger="gateway.store.trust_files"):
        new = folder.changed()
    assert new is not None
    assert set(new.roots) == {root.cert, other.cert}
    assert folder.store is new is not first
    assert "changed: read again (2 files)" in caplog.text
    assert folder.changed() is None


def test_a_folder_that_no_longer_loads_keeps_the_trust_in_force_and_says_so_once(
    tmp_path, root, caplog
):
    (tmp_path / "acme.root.pem").write_bytes(root.cert.public_bytes(Encoding.PEM))
    folder = TrustFolder(tmp_path, every_s=0.0)
    before = folder.store
    (tmp_path / "half-copied.crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\n")
    with caplog.at_level(logging.ERROR, logger="gateway.store.trust_files"):
        assert folder.changed() is None
        assert folder.changed() is None
    assert folder.store is before
    assert caplog.text.count("cannot be loaded") == 1
    assert "half-copied.crl.pem" in caplog.text
    # Once the file is whole (here: a real CRL), the folder is read again.
    crl = make_crl(root, [], now=NOW, number=2)
    (tmp_path / "half-copied.crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    new = folder.changed()
    assert new is not None
    assert new.crls_by(root.cert.subject) == (crl,)


def test_the_folder_is_looked_at_no_more_than_every_interval(tmp_path, root):
    (tmp_path / "acme.root.pem").write_bytes(root.cert.public_bytes(Encoding.PEM))
    folder = TrustFolder(tmp_path, every_s=3600)
    other = make_root_ca("Borealis Medical", alg="P-256", now=NOW)
    (tmp_path / "borealis.root.pem").write_bytes(other.cert.public_bytes(Encoding.PEM))
    assert folder.changed() is None  # not looked at yet: the interval has not passed
