"""Benchmark: `serve` (gunicorn, 2 workers) next to the single-process standard-library server (REFIT_SERVER=simple)
in one run, on 127.0.0.1 with the demo model: p50 / p99 latency and requests per second for 1-row and 1,000-row
CSV requests, 4 concurrent clients. Also `train` with and without one SIGTERM interruption, on the demo batch
(4,000 rows) and on a batch ten times larger.
Run: .venv/bin/python -m scripts.bench_serve
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {
    "target": "churned",
    "problem_type": "binary_classification",
    "metrics": ["roc_auc", "accuracy", "f1", "precision", "recall", "log_loss", "calibration_error"],
    "primary_metric": "roc_auc",
    "categorical_columns": ["plan", "region"],
    "id_column": None,
    "holdout_fraction": 0.5,
    "seed": 42,
    "run_id": "bench",
    "families": ["hgb", "linear", "forest"],
    "max_trials": 3,
    "cv_folds": 3,
}


def opt_ml(root: Path, rows: int = 4000) -> Path:
    from scripts.sample_data import churn_batch

    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"config": json.dumps(CONFIG)}))
    (root / "input" / "data" / "current").mkdir(parents=True)
    churn_batch(rows, 1).to_csv(root / "input" / "data" / "current" / "batch.csv", index=False)
    return root


def train(root: Path, interrupt_after_folds: int | None) -> float:
    env = {**os.environ, "REFIT_OPT_ML": str(root)}
    started = time.perf_counter()
    while True:
        process = subprocess.Popen(
            [sys.executable, "-m", "refit_training.train"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        events = root / "checkpoints" / "events.jsonl"
        while process.poll() is None:
            if (
                interrupt_after_folds
                and events.exists()
                and events.read_text().count('"fold_done"') >= interrupt_after_folds
            ):
                process.send_signal(15)
                process.wait()
                interrupt_after_folds = None
                break
            time.sleep(0.01)
        if process.returncode == 0:
            return time.perf_counter() - started
        if process.returncode != 143:
            raise RuntimeError(f"train exited with {process.returncode}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, kind: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "SM_MODEL_DIR": str(model_dir),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "REFIT_SERVE_HOST": "127.0.0.1",
        "REFIT_SERVER": kind,
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "refit_training.serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{kind} server did not start")


def load(url: str, body: bytes, requests: int, clients: int = 4) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        for _ in range(count):
            request = urllib.request.Request(
                f"{url}/invocations", data=body, method="POST", headers={"Content-Type": "text/csv"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as reply:
                reply.read()
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(requests // clients,)) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rps": len(latencies) / wall,
    }


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from scripts.sample_data import churn_batch

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        print("| train data | uninterrupted (s) | one SIGTERM after 4 folds, resumed (s) | extra |\n|---|---|---|---|")
        for train_rows in (4000, 40_000):
            plain = train(opt_ml(work / f"plain-{train_rows}", train_rows), None)
            interrupted = train(opt_ml(work / f"interrupted-{train_rows}", train_rows), 4)
            print(
                f"| {train_rows:,} rows{' (the demo batch)' if train_rows == 4000 else ''} | {plain:.2f} | "
                f"{interrupted:.2f} | {(interrupted / plain - 1) * 100:.1f}% (target < 20%) |",
                flush=True,
            )
        print()
        rows = churn_batch(1000, 5).drop(columns=["churned"]).to_csv(index=False, header=False).encode()
        one_row = rows.split(b"\n", 1)[0] + b"\n"
        print("| server | request | p50 (ms) | p99 (ms) | requests/s |\n|---|---|---|---|---|")
        for kind in ("gunicorn", "simple"):
            process, url = start_server(work / "plain-4000" / "model", kind)
            try:
                load(url, one_row, 40)  # warm-up
                for label, body, count in (("1 row", one_row, 2000), ("1,000 rows", rows, 200)):
                    result = load(url, body, count)
                    print(
                        f"| {kind} | {label} | {result['p50_ms']:.1f} | {result['p99_ms']:.1f} | {result['rps']:.0f} |",
                        flush=True,
                    )
            finally:
                process.terminate()
                process.wait(timeout=30)
    print(json.dumps({"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
