"""Durable state in SQLite: events, devices, manifests, quarantine, outbox."""
