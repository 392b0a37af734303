"""`--profile`: py-spy samples ota's processes during the unthrottled batch.

Each process's samples are written as collapsed stacks (`NAME.folded`, for flamegraph.pl or
speedscope) and summarized: the functions where its CPU goes, by time inside them and below.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from bench.stack import BenchStack, stat_cpu_seconds
from ota.devstack import venv_binary

PROFILED = ("worker", "bridge", "api", "simulator")
TOP = 12


class Profiler:
    def __init__(self, stack: BenchStack, workdir: Path) -> None:
        self.binary = venv_binary("py-spy")
        if self.binary is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self.stack = stack
        self.workdir = workdir
        self.recorders: dict[str, subprocess.Popen[bytes]] = {}
        self.threads_before: dict[str, Counter[str]] = {}

    def start(self) -> None:
        assert self.binary
        for proc in self.stack.procs:
            if proc.name in PROFILED:
                self.threads_before[proc.name] = thread_cpu(proc.popen.pid)
                self.recorders[proc.name] = subprocess.Popen(
                    [self.binary, "record", "--pid", str(proc.popen.pid), "--format", "raw",
                     "--rate", "100", "--nonblocking", "--gil", "--subprocesses",
                     "--output", str(self._path(proc.name))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip

    def stop(self) -> dict[str, dict[str, object]]:
        """Stop sampling. Per process: CPU seconds by thread name (py-spy sees Python only; the
        Temporal SDK's core runs in Rust threads) and the top Python functions."""
        summary: dict[str, dict[str, object]] = {}
        for proc in self.stack.procs:
            if proc.name in self.threads_before:
                after = thread_cpu(proc.popen.pid)
                after.subtract(self.threads_before[proc.name])
                summary[proc.name] = {
                    "thread_cpu_seconds": {
                        t: round(s, 1) for t, s in after.most_common() if s > 0.05
                    }
                }
        for recorder in self.recorders.values():
            recorder.send_signal(2)  # py-spy writes its output on SIGINT
        for name, recorder in self.recorders.items():
            recorder.wait(60)
            path = self._path(name)
            if path.exists():
                summary[name]["functions"] = top_functions(path.read_text())
        return summary

    def _path(self, name: str) -> Path:
        return self.workdir / f"{name}.folded"


def thread_cpu(pid: int) -> Counter[str]:
    """CPU seconds by thread name (numbered pool threads counted together)."""
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        if (cpu := stat_cpu_seconds(task / "stat")) is not None:
            out[comm.rstrip("0123456789_-")] += cpu
    return out


def top_functions(folded: str, top: int = TOP) -> dict[str, float]:
    """Share of samples with each function on the stack (inclusive), the most first.

    A frame looks like `function (path/file.py:line)`; lines are dropped so a function counts
    once per stack however many lines of it were sampled."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        functions = {_function(frame) for frame in stack.split(";")}
        for function in functions:
            inclusive[function] += n
    if not total:
        return {}
    return {f: round(n / total, 3) for f, n in inclusive.most_common(top)}


def _function(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"
