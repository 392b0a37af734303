"""`ota worker`: run the Temporal worker for batches, verifications and device updates."""

from __future__ import annotations

import typer

from ota import aio
from starter.common import setup_logging, setup_tracing


def worker(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the workflows and activities on task queue `ota` until Ctrl-C."""
    setup_logging(verbose)
    setup_tracing("ota-worker")
    from worker import run_worker  # the worker's imports are heavy; other commands skip them

    aio.run(run_worker())


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
