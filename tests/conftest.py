"""Shared fixtures live in tests/fixtures/, one module per real service."""

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.temporal",
    "tests.fixtures.mqtt",
    "tests.fixtures.stack",
    "tests.fixtures.s3",
    "tests.fixtures.tls",
    "tests.fixtures.outage",
]
