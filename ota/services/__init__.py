"""The service layer: one function per operation, shared by the CLI, the API and the console.

Each takes what it needs (engine, store, client, settings) and raises ota.errors on bad input.
"""
