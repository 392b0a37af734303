"""End-to-end benchmark of the platform against a bare Temporal fan-out on the same server."""
