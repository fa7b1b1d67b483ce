"""Benchmark: `serve` (gunicorn, 2 workers) next to the single-process standard-library server (REFIT_SERVER=simple)
in one run, on 127.0.0.1 with the demo model: p50 / p99 latency and requests per second for 1-row and 1,000-row
CSV requests, 4 concurrent clients. Also `train` with and without one SIGTERM interruption (after the 4th fold),
on the two training jobs `make demo` runs (the first model, from one 4,000-row batch; the retrain, from the drifted
batch plus the first batch as accepted training data, with the champion scored on the same holdout) and on a batch
ten times larger; each pair is run REPEATS times, alternating, and the median is reported.
Run: .venv/bin/python -m scripts.bench_serve
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd

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


REPEATS = 3


def opt_ml(root: Path, channels: dict[str, pd.DataFrame], champion: Path | None = None) -> Path:
    """A training job's /opt/ml: the hyperparameters, one CSV per data channel and the champion's model.tar.gz."""
    (root / "input" / "data" / "config").mkdir(parents=True)
    (root / "input" / "data" / "config" / "config.json").write_text(json.dumps(CONFIG))
    for name, frame in channels.items():
        (root / "input" / "data" / name).mkdir(parents=True)
        frame.to_csv(root / "input" / "data" / name / "batch.csv", index=False)
    if champion is not None:
        (root / "input" / "data" / "champion").mkdir(parents=True)
        shutil.copy(champion, root / "input" / "data" / "champion" / "model.tar.gz")
    return root


def package(model_dir: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return archive


def train(root: Path, interrupt_after_folds: int | None) -> float:
    env = {**os.environ, "REFIT_OPT_ML": str(root)}
    started = time.perf_counter()
    while True:
        process = subprocess.Popen(
            [sys.executable, "-m", "refit_training", "train"],
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
    from refit_core.artifacts import MODEL_FILE, MODEL_SHA256_ENV, sha256_of

    port = free_port()
    env = {
        **os.environ,
        "SM_MODEL_DIR": str(model_dir),
        # What Deploy gives an endpoint's model from its registry entry: this run's own file, so serve loads it.
        MODEL_SHA256_ENV: sha256_of(model_dir / MODEL_FILE),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "REFIT_SERVE_HOST": "127.0.0.1",
        "REFIT_SERVER": kind,
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "refit_training", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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
        first = {"current": churn_batch(4000, 1)}
        train(opt_ml(work / "first-model", first), None)
        champion = package(work / "first-model" / "model", work / "champion.tar.gz")
        jobs = [
            ("demo, first model: one 4,000-row batch", first, None),
            (
                "demo, retrain: drifted 4,000-row batch + 4,000 accepted rows, champion scored",
                {"current": churn_batch(4000, 2, shift=1.0), "train": churn_batch(4000, 1)},
                champion,
            ),
            ("10x data: one 40,000-row batch", {"current": churn_batch(40_000, 1)}, None),
        ]
        print(
            f"| training job | uninterrupted (s, median of {REPEATS}) | one SIGTERM after 4 folds, resumed (s) "
            "| extra | extra, each repeat |\n|---|---|---|---|---|"
        )
        for number, (label, channels, champion_archive) in enumerate(jobs):
            plain, interrupted = [], []
            for repeat in range(REPEATS):
                root = work / f"job{number}-{repeat}"
                plain.append(train(opt_ml(root / "plain", channels, champion_archive), None))
                interrupted.append(train(opt_ml(root / "interrupted", channels, champion_archive), 4))
                print(
                    f"  {label}, repeat {repeat + 1}/{REPEATS}: {plain[-1]:.2f} s / {interrupted[-1]:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
            each = ", ".join(f"{(i / p - 1) * 100:.0f}%" for p, i in zip(plain, interrupted, strict=True))
            plain_s, interrupted_s = statistics.median(plain), statistics.median(interrupted)
            print(
                f"| {label} | {plain_s:.2f} | {interrupted_s:.2f} | {(interrupted_s / plain_s - 1) * 100:.1f}% "
                f"(target < 20%) | {each} |",
                flush=True,
            )
        print()
        rows = churn_batch(1000, 5).drop(columns=["churned"]).to_csv(index=False, header=False).encode()
        one_row = rows.split(b"\n", 1)[0] + b"\n"
        print("| server | request | p50 (ms) | p99 (ms) | requests/s |\n|---|---|---|---|---|")
        for kind in ("gunicorn", "simple"):
            process, url = start_server(work / "first-model" / "model", kind)
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
