"""The `ota` command."""
