"""Benchmark: `refit drift` on 1,000,000 rows x (50 numeric + 10 categorical) against a stored baseline of the same
size, on the two common Parquet layouts side by side: pandas' default (the whole file one row group) and row groups
of 100,000 rows. On each, next to (a) the same reader + numpy.sort of each numeric column; on the 100k layout also
(b) the same read + a scipy.stats.ks_2samp loop against the full reference. Each runs in its own process (wall time,
peak RSS; the median of --repeat runs). Then `refit drift` on a batch --scale times larger (written a million rows at a time, never held whole),
to show that the streamed check's memory does not grow with the batch. Also times the drift Lambda's cold import and
sizes its dependencies.
Run: .venv/bin/python -m scripts.bench_drift [--rows N] [--scale K]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
NUMERIC, CATEGORICAL = 50, 10
# Row groups of 100,000 rows are 48 MB of this data in memory, about the 64-128 MB that Spark and most writers aim
# for; pandas and pyarrow write 1M rows per group by default, so a 1M-row file is a single group.
ROW_GROUP = 100_000
LAYOUTS = {"one row group (pandas default)": None, "100,000-row groups": ROW_GROUP}


def make(rows: int, seed: int, shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {f"n{i}": rng.normal(0, 1, rows) for i in range(NUMERIC)}
    for i in range(3):
        data[f"n{i}"] += shift
    for i in range(CATEGORICAL):
        data[f"c{i}"] = pd.array(rng.choice([f"v{k}" for k in range(12)], rows), dtype="str")
    return pd.DataFrame(data)


TASKS = {
    "refit drift": """
sink = io.StringIO()
code = main(["drift", "--baseline", BASELINE, CURRENT, "--json"], out=sink)
assert code == 0, sink.getvalue()
""",
    "(a) read + numpy.sort per numeric column": """
import numpy as np
from refit_core.datasets import read_table
frame = read_table(CURRENT)
for i in range(50):
    np.sort(frame[f"n{i}"].to_numpy())
""",
    "(b) read + scipy ks_2samp loop": """
from scipy import stats
from refit_core.datasets import read_table
frame = read_table(CURRENT)
reference = read_table(REFERENCE)
for i in range(50):
    stats.ks_2samp(reference[f"n{i}"].to_numpy(), frame[f"n{i}"].to_numpy())
""",
}

# Peak RSS is the kernel's high-water mark (VmHWM), reset after the imports. (getrusage's ru_maxrss is not used: on
# Linux it carries the forking parent's peak across exec, which hid the task's own peak in an earlier version.)
RUNNER = """
import re, sys, time
sys.path.insert(0, {root!r})
BASELINE, CURRENT, REFERENCE = {baseline!r}, {current!r}, {reference!r}
import io
import numpy, pandas, scipy.stats, pyarrow, pyarrow.parquet  # imports are not part of the timing
from scripts.cli import main
from refit_core.datasets import read_table

def status(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
started = time.perf_counter()
{body}
print(time.perf_counter() - started, before, status("VmHWM"))
"""


def run_task(body: str, baseline: Path, current: Path, reference: Path) -> tuple[float, float, float]:
    script = RUNNER.format(
        root=str(ROOT), baseline=str(baseline), current=str(current), reference=str(reference), body=body
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    seconds, before_kb, peak_kb = result.stdout.split()
    return float(seconds), int(before_kb) / 1024, int(peak_kb) / 1024


def lambda_cold_import() -> float:
    env = {**os.environ, "REFIT_MODEL_CONFIG": "{}", "POWERTOOLS_TRACE_DISABLED": "true"}
    code = "import time; t = time.perf_counter(); import refit_handlers.check_batch; print(time.perf_counter() - t)"
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout)
        for _ in range(3)
    ]
    return min(runs)


def lambda_package_mb(workdir: Path) -> float:
    target = workdir / "lambda-package"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(target),
            "-r",
            str(ROOT / "functions" / "requirements.txt"),
            "-c",
            str(ROOT / "constraints.txt"),
        ],
        check=True,
        capture_output=True,
    )
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scale", type=int, default=5, help="the large batch is this many times --rows")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each task; the median is reported")
    parser.add_argument("--skip-package", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from refit_core.profile import build_profile, dumps_profile

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        print(f"generating {args.rows:,} x {NUMERIC + CATEGORICAL} reference and current batches ...", flush=True)
        reference = make(args.rows, 1, 0.0)
        reference_path = work / "reference.parquet"
        reference.to_parquet(reference_path, row_group_size=ROW_GROUP)
        baseline = work / "baseline.json"
        started = time.perf_counter()
        baseline.write_text(dumps_profile(build_profile(reference, categorical=[f"c{i}" for i in range(CATEGORICAL)])))
        profile_seconds = time.perf_counter() - started
        del reference
        current = make(args.rows, 2, 0.05)
        batch_mb = current.memory_usage(deep=True).sum() / 2**20
        paths = {}
        for layout, row_group_size in LAYOUTS.items():
            paths[layout] = work / f"current-{row_group_size or 'default'}.parquet"
            current.to_parquet(paths[layout], row_group_size=row_group_size)
        del current
        print(
            f"baseline profile: {profile_seconds:.1f} s, {baseline.stat().st_size / 2**20:.1f} MB; "
            f"current batch in memory: {batch_mb:.0f} MB",
            flush=True,
        )
        runs = [(layout, task) for layout in LAYOUTS for task in list(TASKS)[:2]]
        runs.append(("100,000-row groups", list(TASKS)[2]))
        results = {}
        for layout, task in runs:
            print(f"running {task} on {layout} ...", flush=True)
            repeats = sorted(run_task(TASKS[task], baseline, paths[layout], reference_path) for _ in range(args.repeat))
            results[layout, task] = repeats[len(repeats) // 2]  # the run with the median wall time
        print()
        print("| file layout | task | wall (s) | peak RSS (MB) | RSS added (MB) |")
        print("|---|---|---|---|---|")
        for (layout, task), (seconds, before, peak) in results.items():
            print(f"| {layout} | {task} | {seconds:.2f} | {peak:.0f} | {peak - before:.0f} |")
        ratios = {}
        for layout in LAYOUTS:
            ours, _, peak_ours = results[layout, "refit drift"]
            before_ours = results[layout, "refit drift"][1]
            sort_only = results[layout, list(TASKS)[1]][0]
            ratios[layout] = (ours / sort_only, (peak_ours - before_ours) / batch_mb)
            print(
                f"{layout}: refit drift / (a) = {ratios[layout][0]:.2f}x (target <= 1.5); "
                f"RSS added / batch = {ratios[layout][1]:.2f} (target <= 1)"
            )
        groups = "100,000-row groups"
        print(
            f"(b) / refit drift on {groups} = {results[groups, list(TASKS)[2]][0] / results[groups, 'refit drift'][0]:.2f}x"
        )
        print(f"writing a {args.scale}x larger current batch ({args.scale * args.rows:,} rows) ...", flush=True)
        large_path = work / "large.parquet"
        with pq.ParquetWriter(large_path, pa.Schema.from_pandas(make(10, 0, 0.0), preserve_index=False)) as writer:
            for part in range(args.scale):
                part_table = pa.Table.from_pandas(make(args.rows, 100 + part, 0.05), preserve_index=False)
                writer.write_table(part_table, row_group_size=ROW_GROUP)
        print("running refit drift on it ...", flush=True)
        large = run_task(TASKS["refit drift"], baseline, large_path, reference_path)
        print(
            f"| `refit drift`, {args.scale}x the rows ({args.scale * batch_mb:.0f} MB in memory) | {large[0]:.2f} "
            f"| {large[2]:.0f} | {large[2] - large[1]:.0f} |"
        )
        print(f"drift Lambda cold import: {lambda_cold_import():.2f} s", flush=True)
        if not args.skip_package:
            print(f"drift Lambda dependencies unpacked: {lambda_package_mb(work):.0f} MB (zip limit 250 MB)")
    print(json.dumps({"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
