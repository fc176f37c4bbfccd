"""Planning throughput in Python beside wasmtime-rs, on the same input:
the lines of examples/profiles.ndjson in batches of 500, one component
instance reused, best of several rounds.

    target/python/bin/python python/bench_plan.py [--rounds 5] [--batch 500] [--no-rust]

The Rust figure comes from `cargo bench -p outreach-tests --bench
plan_throughput -- --input … --config …` (a release build on first use).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from profile_destination import Component  # noqa: E402


def best_rate(plan, batches: list[list[str]], rounds: int) -> float:
    records = sum(len(b) for b in batches)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in batches:
            plan(batch)
        best = min(best, time.perf_counter() - start)
    return records / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--input", default=str(ROOT / "examples" / "profiles.ndjson"))
    parser.add_argument("--config", default=str(ROOT / "examples" / "destination.json"))
    parser.add_argument("--no-rust", action="store_true")
    args = parser.parse_args()

    wasm = ROOT / "target" / "guest" / "wasm32-wasip2" / "component" / "outreach_guest.wasm"
    start = time.perf_counter()
    component = Component.load(wasm)
    loaded = time.perf_counter() - start
    destination = component.create(Path(args.config).read_text(encoding="utf-8"))
    lines = Path(args.input).read_text(encoding="utf-8").splitlines()
    batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]

    # The package's tagged values, and wasmtime-py's own values underneath.
    raw = lambda batch: component._call(component._plan, destination._handle, batch)  # noqa: E731
    print(f"workload: {len(lines)} lines of {args.input}, batches of {args.batch}, best of {args.rounds} rounds")
    print(f"component load (compile) in wasmtime-py: {loaded * 1e3:.0f} ms")
    print(f"Python, the package (tagged outcomes): {best_rate(destination.plan, batches, args.rounds):>8.0f} records/s")
    print(f"Python, wasmtime-py values only:       {best_rate(raw, batches, args.rounds):>8.0f} records/s")
    if not args.no_rust:
        rust = subprocess.run(
            ["cargo", "bench", "-q", "-p", "outreach-tests", "--bench", "plan_throughput", "--",
             "--input", args.input, "--config", args.config,
             "--batch", str(args.batch), "--rounds", str(args.rounds)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
        for line in rust.stdout.splitlines():
            if "records/s" in line:
                print(f"Rust, {line.strip()}")


if __name__ == "__main__":
    main()
