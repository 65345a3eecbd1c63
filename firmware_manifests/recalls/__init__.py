"""Sample recall notices and a CSAF 2.0 advisory."""
