"""Simulated medical devices and manufacturers: demo PKI, signed events, a fleet over MQTT."""
