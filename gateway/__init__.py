"""Provenance Gateway: verifiable firmware, maintenance and custody history for device fleets.

Layers (each a sub-package; imports only point downwards)::

    views    cli, web UI, audit bundles, FHIR export
    service  the running gateway: lanes, batcher, outbox
    ingest   MQTT adapter, broker configuration
    ledger   transparency log, witnesses, chain anchors
    store    SQLite: events, devices, manifests, outbox
    core     COSE, identity, events, manifests, SBOM, recalls: pure, no I/O
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
