"""`provgw-sim publish-manifest` against a real Mosquitto: the manufacturer's bytes, its topic."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.ingest.topics import MANUFACTURER_FILTER
from tests._helpers import Inbox

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "firmware_manifests" / "samples" / "acme-infusion" / "volara-lvp-3" / "4.2.10"
PROVGW_SIM = Path(sys.executable).parent / "provgw-sim"


def _publish_manifest(broker, slug: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(PROVGW_SIM),
            "publish-manifest",
            str(MANIFEST / "manifest.cbor"),
            "--broker-dir",
            str(broker.setup.config.directory),
            "--manufacturer",
            slug,
            "--port",
            str(port),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_publish_manifest_delivers_the_file_unchanged_on_the_manufacturers_topic(mosquitto):
    inbox = Inbox()
    with mosquitto.client("gateway-urgent", on_message=inbox) as gw:
        gw.subscribe(MANUFACTURER_FILTER)
        done = _publish_manifest(mosquitto, "acme", mosquitto.port)
        assert done.returncode == 0, done.stderr
        data = (MANIFEST / "manifest.cbor").read_bytes()
        topic = "provgw/v1/mfr/acme/manifest"
        assert json.loads(done.stdout) == {"topic": topic, "bytes": len(data)}
        got, payload, _, qos, _ = inbox.get(timeout=5)
        assert (got, payload, qos) == (topic, data, 1)
        assert inbox.nothing_within(0.3)


def test_publish_manifest_for_a_manufacturer_without_credentials_is_a_usage_error(mosquitto):
    inbox = Inbox()
    with mosquitto.client("gateway-urgent", on_message=inbox) as gw:
        gw.subscribe(MANUFACTURER_FILTER)
        done = _publish_manifest(mosquitto, "initech", mosquitto.port)
        assert done.returncode == 2
        assert "initech" in done.stderr
        assert inbox.nothing_within(0.3)


def test_publish_manifest_with_the_broker_down_fails_with_exit_1(mosquitto):
    done = _publish_manifest(mosquitto, "acme", _closed_port())
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
