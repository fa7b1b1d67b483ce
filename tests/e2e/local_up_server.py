"""`refit local up` in a subprocess, for the tests that drive it from outside (the AWS CLI, Airflow): start it on a
free port, wait for its ready line, read the client environment it prints, stop it with SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READY = "refit local: ready"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, port: int, workdir: Path, assembly: Path | None = None) -> None:
        """`assembly`: stand up this synthesized assembly (`--assembly`) instead of synthesizing refit.toml."""
        self.port = port
        self.workdir = workdir
        self.lines: list[str] = []
        self.ready = threading.Event()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scripts.cli", "local", "up", "--port", str(port), "--workdir", str(workdir)]
            + (["--assembly", str(assembly)] if assembly is not None else []),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(READY):
                self.ready.set()

    def environment(self) -> dict[str, str]:
        """The client environment exactly as the server printed it (`export KEY=VALUE` lines)."""
        exported = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in self.lines
            if line.strip().startswith("export ")
        )
        return exported

    def stop(self, timeout: float = 60) -> None:
        """SIGINT (Ctrl-C) if it still runs, and wait; killed if it does not exit in `timeout` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
