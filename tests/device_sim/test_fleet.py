"""The simulated fleet against a real Mosquitto: what it publishes, its faults, its state file."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.cli import cli
from device_sim.events import SimDevice, make_event
from device_sim.fleet import (
    FaultRates,
    FleetOptions,
    SeqState,
    flip_signature_bit,
    run_fleet,
    select_devices,
)
from device_sim.pki import init_pki
from gateway.core import cose
from gateway.core.errors import MalformedError, MismatchError, SignatureError
from gateway.core.identity import DeviceRegistry
from gateway.core.messages import verify_device_message
from gateway.ingest.broker_config import write_broker_config
from gateway.ingest.topics import EVENT_FILTER, parse_topic
from gateway.store.trust_files import load_trust_dir
from tests._helpers import Inbox

# --- without a broker ----------------------------------------------------------------------------


def test_fault_rates_must_be_probabilities_that_add_up_to_at_most_one():
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRates(replay=1.5)
    with pytest.raises(ValueError, match=r"add up to 1\.2"):
        FaultRates(bad_signature=0.6, malformed=0.6)


def test_fault_rates_pick_each_kind_in_proportion():
    # Rates that are exact binary fractions, so the boundaries fall exactly on draws.
    rates = FaultRates(bad_signature=0.125, replay=0.25, malformed=0.25, impersonate=0.125)
    picks = Counter(rates.pick(i / 1024) for i in range(1024))
    assert picks == {
        "bad_signature": 128,
        "replay": 256,
        "malformed": 256,
        "impersonate": 128,
        "valid": 256,
    }


def test_seq_state_round_trips_through_its_file(tmp_path):
    path = tmp_path / "state.json"
    state = SeqState.load(path)
    assert [state.take("pump-1") for _ in range(3)] == [1, 2, 3]
    state.mark_introduced("pump-1")
    state.record_valid("pump-1", 3, 1234)
    state.save()
    again = SeqState.load(path)
    assert again.take("pump-1") == 4
    assert again.introduced("pump-1")
    assert again.last_valid("pump-1") == (3, 1234)
    assert not again.introduced("pump-2")
    assert again.take("pump-2") == 1


def test_a_damaged_state_file_is_refused_with_a_way_out(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "devices": {"x": {}}}', encoding="utf-8")
    with pytest.raises(ValueError, match="move it aside"):
        SeqState.load(path)


def test_asking_for_more_devices_than_the_pki_has_says_how_to_make_more(pki_and_broker):
    pki, _ = pki_and_broker
    with pytest.raises(ValueError, match="--devices-per-model"):
        select_devices(pki, 10_000)


# --- against the real broker ---------------------------------------------------------------------

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki_and_broker(tmp_path_factory):
    """A real `provgw-sim pki init` PKI (9 devices) and its broker configuration.

    The ACL gains one line for the tests: gateway-admin may write on every device topic, to be the
    fleet's privileged publisher (never in a generated configuration).
    """
    pki = tmp_path_factory.mktemp("fleet-pki") / "pki"
    init_pki(pki, devices_per_model=1)
    config = write_broker_config(pki, tmp_path_factory.mktemp("fleet-broker"), now=NOW)
    with config.acl.open("a", encoding="utf-8") as acl:
        acl.write("\nuser gateway-admin\ntopic write provgw/v1/+/dev/+/evt/#\n")
    return pki, config


@pytest.fixture
def broker(pki_and_broker, start_mosquitto):
    pki, config = pki_and_broker
    return start_mosquitto(pki, config)


@pytest.fixture
def inbox(broker):
    box = Inbox()
    client = broker.client("gateway-routine", on_message=box, session_expiry=0)
    box.client = client
    with client:
        client.subscribe(EVENT_FILTER)
        yield box


def _options(pki, config, broker, tmp_path, **kwargs) -> FleetOptions:
    defaults = {
        "pki": pki,
        "broker_dir": config.directory,
        "devices": 9,
        "rate": 300.0,
        "duration": 0.5,
        "port": broker.port,
        "seed": 7,
        "state_path": tmp_path / "fleet-state.json",
    }
    return FleetOptions(**(defaults | kwargs))


def _verifier(pki: Path):
    trust = load_trust_dir(pki / "trust")
    registry = DeviceRegistry()
    now = dt.datetime.now(dt.UTC)

    def verify(topic: str, payload: bytes):
        return verify_device_message(
            payload,
            trust=trust,
            registry=registry,
            now=now,
            topic_device=parse_topic(topic).device,
        )

    return verify


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_fleet_events_arrive_signed_by_their_devices_in_seq_order(
    pki_and_broker, broker, inbox, tmp_path
):
    pki, config = pki_and_broker
    report = run_fleet(_options(pki, config, broker, tmp_path))
    assert report.connected == 9
    assert report.sent == report.acked == report.kinds["valid"]["sent"] > 100
    assert report.refused == report.unacked == 0
    received = inbox.wait_for(report.sent)
    assert len(received) == report.sent

    verify = _verifier(pki)
    seqs: dict[str, list[int]] = defaultdict(list)
    chains: dict[str, list[bool]] = defaultdict(list)
    types = Counter()
    for topic, payload in received:
        verified = verify(topic, payload)  # raises unless valid, with topic = signer
        seqs[verified.device_id].append(verified.event.seq)
        chains[verified.device_id].append(bool(cose.decode_sign1(payload).x5chain))
        types[verified.event.type] += 1
    assert len(seqs) == 9
    for device, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), device
        # The chain travels until the broker acknowledged it once, then only the kid.
        assert chains[device][0]
        assert not chains[device][-1]
    assert types["maintenance"] > types["firmware_update"] > 0
    assert types["custody"] > types["firmware_update"]


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_each_injected_fault_is_what_it_claims_to_be(pki_and_broker, broker, inbox, tmp_path):
    pki, config = pki_and_broker
    faults = FaultRates(bad_signature=0.15, replay=0.15, malformed=0.15, impersonate=0.15)
    report = run_fleet(
        _options(
            pki,
            config,
            broker,
            tmp_path,
            duration=1.0,
            faults=faults,
            privileged_publisher="gateway-admin",
        )
    )
    assert report.refused == report.unacked == 0  # the privileged publisher may impersonate
    assert all(report.kinds[k]["sent"] > 5 for k in report.kinds)
    received = inbox.wait_for(report.sent)
    assert len(received) == report.sent

    verify = _verifier(pki)
    seen: dict[tuple[str, int], bytes] = {}
    outcome = Counter()
    for topic, payload in received:
        try:
            cose.decode_sign1(payload)
        except MalformedError:
            outcome["malformed"] += 1  # random bytes or truncated CBOR: does not even decode
            continue
        try:
            verified = verify(topic, payload)
        except SignatureError:
            outcome["bad_signature"] += 1
            continue
        except MismatchError as err:
            outcome[f"impersonate:{err.reason}"] += 1
            continue
        key = (verified.device_id, verified.event.seq)
        if key in seen:
            assert seen[key] != payload  # the same seq with other bytes
            outcome["replay"] += 1
        else:
            seen[key] = payload
            outcome["valid"] += 1
    expected = {kind: counts["sent"] for kind, counts in report.kinds.items()}
    expected["impersonate:topic-mismatch"] = expected.pop("impersonate")
    assert outcome == expected


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_the_broker_acl_refuses_impersonation_from_the_devices_own_connection(
    pki_and_broker, broker, inbox, tmp_path
):
    pki, config = pki_and_broker
    report = run_fleet(_options(pki, config, broker, tmp_path, faults=FaultRates(impersonate=0.5)))
    refused = report.kinds["impersonate"]
    assert refused["sent"] == refused["refused"] > 10
    assert report.refusals == {"Not authorized (0x87)": refused["sent"]}
    received = inbox.wait_for(report.acked)
    assert len(received) == report.acked == report.kinds["valid"]["sent"]
    verify = _verifier(pki)
    for topic, payload in received:
        assert verify(topic, payload).device_id == parse_topic(topic).device


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_a_rerun_continues_each_devices_seq_from_the_state_file(
    pki_and_broker, broker, inbox, tmp_path
):
    pki, config = pki_and_broker
    state = tmp_path / "fleet-state.json"
    first = run_fleet(_options(pki, config, broker, tmp_path, rate=100.0, seed=1))
    # The second run goes through the command line, as a user reruns it.
    result = CliRunner().invoke(
        cli,
        [
            "fleet",
            "--pki",
            str(pki),
            "--broker",
            str(config.directory),
            "--port",
            str(broker.port),
            "--devices",
            "9",
            "--rate",
            "100",
            "--duration",
            "0.5",
            "--seed",
            "2",
            "--state",
            str(state),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    second = json.loads(result.stdout)
    assert second["acked"] == second["sent"] > 20
    received = inbox.wait_for(first.sent + second["sent"])

    verify = _verifier(pki)
    seqs: dict[str, list[int]] = defaultdict(list)
    for topic, payload in received:
        verified = verify(topic, payload)
        seqs[verified.device_id].append(verified.event.seq)
    for device, got in seqs.items():
        # Never a seq used twice: the second run started where the first stopped.
        assert got == list(range(1, len(got) + 1)), device
    saved = json.loads(state.read_text(encoding="utf-8"))["devices"]
    assert {d: s["next_seq"] - 1 for d, s in saved.items() if s["next_seq"] > 1} == {
        d: len(s) for d, s in seqs.items()
    }


def test_a_flipped_signature_bit_fails_verification(pki_and_broker):
    pki, _ = pki_and_broker
    device = select_devices(pki, 1)[0]
    sim = SimDevice.load(pki, device.id)
    now = dt.datetime.now(dt.UTC)
    event = make_event(
        device.id, "custody", 1, int(now.timestamp() * 1000), random.Random(1), today=now.date()
    )
    signed = sim.sign(event)
    verify = _verifier(pki)
    topic = f"provgw/v1/{device.site}/dev/{device.id}/evt/custody"
    assert verify(topic, signed).event.seq == 1
    with pytest.raises(SignatureError):
        _verifier(pki)(topic, flip_signature_bit(signed))
