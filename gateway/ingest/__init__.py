"""Bytes in, bytes out: the MQTT adapter and broker configuration."""
