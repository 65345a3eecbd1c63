"""What people and auditors touch: the CLI, the web UI, audit bundles (``audit``), FHIR export."""
