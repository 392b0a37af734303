"""Helpers for the device-side tests: LinkKit's device script, and database seeding."""
