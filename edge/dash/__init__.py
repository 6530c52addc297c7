"""The telemetry dashboard: `edge-dash`, a subscriber process serving a local live page."""
