from __future__ import annotations

import hashlib

import pytest

from gateway.core.errors import MalformedError, PolicyError
from gateway.store.offers import (
    MANIFEST_CAMPAIGN_PREFIX,
    ManifestOffers,
    campaign_id,
    campaign_manifest,
)

M1 = hashlib.sha256(b"manifest 1").digest()
M2 = hashlib.sha256(b"manifest 2").digest()
DEV = "09506000134352-A1001"
OTHER = "09506000134352-A1002"


@pytest.fixture
def offers(db):
    return ManifestOffers(db)


def _row(offers: ManifestOffers, manifest: bytes = M1, device: str = DEV):
    (row,) = [r for r in offers.remediation(manifest) if r.device_id == device]
    return row


# -- campaign ids ---------------------------------------------------------------------------------


def test_campaign_id_names_the_manifest_digest_and_reads_back():
    campaign = campaign_id(M1)
    assert campaign == MANIFEST_CAMPAIGN_PREFIX + M1.hex()
    assert campaign_manifest(campaign) == M1


@pytest.mark.parametrize(
    "campaign",
    [
        "Z-0412-2026",
        "manifest:" + "ab" * 31,
        "manifest:" + "AB" * 32,
        "manifest:" + "ab" * 32 + "\n",
    ],
)
def test_recall_ids_and_malformed_campaigns_name_no_manifest(campaign):
    assert campaign_manifest(campaign) is None


# -- the first offer ------------------------------------------------------------------------------


def test_first_offer_creates_the_row_with_one_attempt(offers):
    assert offers.set_state(M1, DEV, "offered", at_ms=100, detail="sent") is True
    row = _row(offers)
    assert row.recall_id == campaign_id(M1)
    assert (row.state, row.attempts, row.matched_ms, row.offered_ms) == ("offered", 1, 100, 100)
    assert (row.detail, row.updated_ms) == ("sent", 100)
    assert offers.offered() == [(M1, DEV, 1, 100)]


@pytest.mark.parametrize("state", ["installed", "failed", "unreachable"])
def test_report_about_a_device_never_offered_the_manifest_is_malformed(offers, state):
    with pytest.raises(MalformedError) as info:
        offers.set_state(M1, DEV, state, at_ms=100)
    assert info.value.reason == "remediation-unknown"
    assert offers.remediation(M1) == []


def test_unknown_state_is_a_programming_error_and_pending_is_not_an_offer_state(offers):
    with pytest.raises(ValueError, match="unknown"):
        offers.set_state(M1, DEV, "pending", at_ms=100)
    with pytest.raises(ValueError, match="unknown"):
        offers.set_state(M1, DEV, "shipped", at_ms=100)


# -- moves ----------------------------------------------------------------------------------------


def test_a_repeated_offer_is_a_retry_that_counts_an_attempt(offers):
    offers.set_state(M1, DEV, "offered", at_ms=100)
    assert offers.set_state(M1, DEV, "offered", at_ms=200) is True
    row = _row(offers)
    assert (row.state, row.attempts, row.matched_ms, row.offered_ms) == ("offered", 2, 100, 200)


@pytest.mark.parametrize("state", ["installed", "failed", "unreachable"])
def test_an_offer_moves_to_each_outcome_and_stamps_its_time(offers, state):
    offers.set_state(M1, DEV, "offered", at_ms=100, detail="sent")
    assert offers.set_state(M1, DEV, state, at_ms=300) is True
    row = _row(offers)
    assert row.state == state
    assert getattr(row, f"{state}_ms") == 300
    assert (row.attempts, row.updated_ms, row.detail) == (1, 300, "sent")  # detail kept


@pytest.mark.parametrize("state", ["failed", "unreachable"])
def test_failed_or_unreachable_devices_can_be_offered_again_and_then_install(offers, state):
    offers.set_state(M1, DEV, "offered", at_ms=100)
    offers.set_state(M1, DEV, state, at_ms=200)
    assert offers.set_state(M1, DEV, "offered", at_ms=300) is True
    assert offers.set_state(M1, DEV, "installed", at_ms=400, detail="4.2.10") is True
    row = _row(offers)
    assert (row.state, row.attempts, row.installed_ms, row.detail) == (
        "installed",
        2,
        400,
        "4.2.10",
    )


def test_a_failed_device_can_install_without_another_offer(offers):
    offers.set_state(M1, DEV, "offered", at_ms=100)
    offers.set_state(M1, DEV, "failed", at_ms=200)
    assert offers.set_state(M1, DEV, "installed", at_ms=300) is True
    assert _row(offers).state == "installed"


# -- refused moves and repeats --------------------------------------------------------------------


@pytest.mark.parametrize("state", ["offered", "failed", "unreachable"])
def test_installed_is_final(offers, state):
    offers.set_state(M1, DEV, "offered", at_ms=100)
    offers.set_state(M1, DEV, "installed", at_ms=200)
    with pytest.raises(PolicyError) as info:
        offers.set_state(M1, DEV, state, at_ms=300)
    assert info.value.reason == "remediation-transition"
    assert f"manifest {M1.hex()[:16]}" in info.value.message
    row = _row(offers)
    assert (row.state, row.updated_ms) == ("installed", 200)


def test_a_failed_device_cannot_become_unreachable_without_a_new_offer(offers):
    offers.set_state(M1, DEV, "offered", at_ms=100)
    offers.set_state(M1, DEV, "failed", at_ms=200)
    with pytest.raises(PolicyError):
        offers.set_state(M1, DEV, "unreachable", at_ms=300)
    assert _row(offers).state == "failed"


@pytest.mark.parametrize("state", ["installed", "failed", "unreachable"])
def test_a_repeated_report_changes_nothing(offers, state):
    offers.set_state(M1, DEV, "offered", at_ms=100)
    offers.set_state(M1, DEV, state, at_ms=200, detail="first")
    before = _row(offers)
    assert offers.set_state(M1, DEV, state, at_ms=300, detail="again") is False
    assert _row(offers) == before


# -- reading --------------------------------------------------------------------------------------


def test_offers_of_two_manifests_and_devices_are_kept_apart(offers):
    offers.set_state(M1, DEV, "offered", at_ms=100)
    offers.set_state(M1, OTHER, "offered", at_ms=110)
    offers.set_state(M2, DEV, "offered", at_ms=120)
    offers.set_state(M1, DEV, "installed", at_ms=200)
    offers.set_state(M1, OTHER, "failed", at_ms=210)
    assert offers.state_counts(M1) == {"installed": 1, "failed": 1}
    assert offers.state_counts(M2) == {"offered": 1}
    assert [r.device_id for r in offers.remediation(M1)] == [DEV, OTHER]
    assert offers.open_for(DEV) == [(M2, "offered")]
    assert offers.open_for(OTHER) == [(M1, "failed")]
    assert offers.offered() == [(M2, DEV, 1, 120)]
    assert offers.summary(M1) == {
        "manifest": M1.hex(),
        "devices": 2,
        "counts": {"installed": 1, "failed": 1},
    }
