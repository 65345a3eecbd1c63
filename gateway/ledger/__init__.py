"""Proof layer: transparency log, checkpoints, witnesses, chain anchors."""
