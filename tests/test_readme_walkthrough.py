"""The README's walkthrough ("Using it") runs as written (issue 13): its commands, read from the
README, in order, through a shell, with the `ota` of this venv, against the stack `ota dev` would
run (worker, bridge and HTTP server on the test's Temporal and Mosquitto).

What a reader does besides typing is done here too: `<batch>` becomes the id `ota batch create`
printed, and a `batch show` whose comment says what it shows is asked again until it does. The
product key is made unique, since the test shares its broker with others."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.stack import OtaProcesses, ota_processes  # noqa: F401 (fixture)

README = Path(__file__).resolve().parent.parent / "README.md"
START = "Then, in a second terminal (activated too):"
SHOWS = re.compile(r"# (completed|phase 1 of 2 \(\d+ devices\): waiting for promote)")

pytestmark = pytest.mark.slow


def walkthrough() -> list[tuple[str, str]]:
    """The walkthrough's commands, each with its comment ("" when it has none)."""
    text = README.read_text()
    block = text[text.index(START) + len(START) :].lstrip("\n")
    lines = []
    for line in block.splitlines():
        if not line.startswith("    "):
            break
        lines.append(line.strip())
    joined = "\n".join(lines).replace("\\\n", "")
    commands = []
    for line in joined.splitlines():
        command, _, comment = line.partition("  #")
        commands.append((" ".join(command.split()), comment.strip().lstrip("# ")))
    return commands


def test_the_walkthrough_runs_as_written(ota_processes: OtaProcesses, tmp_path):  # noqa: F811
    stack = ota_processes
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    product = f"pk_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **stack.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    commands = walkthrough()
    assert [c for c, _ in commands if c.startswith("ota verify")] == [
        "ota verify thermo_fw --device dev-00000 --device dev-00001 --wait"
    ]
    batch, background = "", None
    try:
        for command, comment in commands:
            command = re.sub(r"\bpk1\b", product, command).replace("<batch>", batch)
            if command == "kill %1":
                assert background is not None and background.poll() is None
                os.killpg(background.pid, signal.SIGINT)
                background.wait(30)
                continue
            if command.endswith("&"):
                background = subprocess.Popen(
                    ["bash", "-c", command[:-1]], cwd=tmp_path, env=env, start_new_session=True
                )
                continue
            expected = SHOWS.search("# " + comment)
            deadline = time.monotonic() + 120
            while True:
                run = subprocess.run(
                    ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                    text=True, timeout=180,
                )  # fmt: skip
                assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
                if expected is None or expected.group(1) in " ".join(run.stdout.split()):
                    break
                assert time.monotonic() < deadline, f"{command}: never {expected.group(1)}"
                time.sleep(2)
            if command.startswith("ota verify"):
                assert "verified" in run.stdout, run.stdout
                # --wait said how far it got, on stderr (a pipe: plain lines), the outcome last
                assert "completed: 2 of 2 done (updated 2)" in run.stderr, run.stderr
            if command.startswith("ota batch create"):
                batch = re.match(r"batch (\S+):", run.stdout).group(1)  # type: ignore[union-attr]
            if command.startswith("ota batch cancel"):
                assert f"sent to batch {batch}" in run.stdout
    finally:
        if background is not None and background.poll() is None:
            os.killpg(background.pid, signal.SIGKILL)
            background.wait()
