"""Benchmark of the analysis: evaluating one merge, and an 11 x 11 (start, alpha) sweep.

Uses the default zoo (``lwmm zoo build``): the advent and minent final checkpoints, the two
kinds of strategy the paper's Fig. 5 merges. Reports

- the time to evaluate one merged model on a 100-image ``real`` val at the zoo's resolution
  (the val set is generated once beforehand and held in memory; its generation time is shown
  separately), target <= 3 s on a 2-core CPU;
- an 11 x 11 sweep scoring ``real`` and ``synthetic`` (100 images each) per cell, caching off:
  on the CPU serially and on a local two-process pool; on a GPU in one process with the pool,
  the model and the val sets on the device (the sweep's default there).

The last line is machine-readable: ``eval_100_real_s=<x> sweep_11x11_s=<y> executor=<name>``.

Usage: ``python benchmarks/analysis.py [--zoo data/zoo] [--device auto] [--executors ...]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lwmm_lab.analysis.evaluation import evaluate, val_set
from lwmm_lab.analysis.sweeps import grid, run_sweep
from lwmm_lab.engine.model import merged_model
from lwmm_lab.engine.pool import Pool
from lwmm_lab.zoo import load_manifest, select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="data/zoo")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--executors", nargs="+", help="serial, process (default: both on a CPU, serial on a GPU)"
    )
    args = parser.parse_args()
    manifest = load_manifest(args.zoo)
    resolution = tuple(manifest["config"]["resolution"])
    finals = {
        e["strategy"]: e["path"] for e in select(manifest, scenario="strategies", fraction=1.0)
    }
    paths = [finals["advent"], finals["minent"]]

    started = time.perf_counter()
    data = val_set("real", 100, resolution)
    generation = time.perf_counter() - started
    pool = Pool(paths, device=args.device)
    model = merged_model(pool, alpha=0.5)
    evaluate(model, data)  # warm up
    times = []
    for _ in range(5):
        if pool.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        evaluate(model, data)
        times.append(time.perf_counter() - started)
    evaluation = statistics.median(times)
    print(f"device {pool.device}, resolution {resolution[0]}x{resolution[1]}")
    print(f"100-image real val: generated in {generation:.2f} s; evaluated in {evaluation:.2f} s")

    device = str(pool.device)
    cells = grid(
        paths, domains=("real", "synthetic"), images=100, resolution=resolution, device=device
    )
    on_cpu = pool.device.type == "cpu"
    executors = args.executors or (["serial", "process"] if on_cpu else ["serial"])
    sweeps = {}
    for executor in executors:
        started = time.perf_counter()
        result = run_sweep(cells, executor=executor, workers=2, cache=None, progress=False)
        sweeps[executor] = time.perf_counter() - started
        best = max(result.results, key=lambda r: r["miou"]["real"])
        where = f"s = {best['start']}, alpha = {best['alpha']:.1f}"
        print(
            f"11 x 11 sweep, {executor}: {sweeps[executor]:.0f} s (best real mIoU "
            f"{best['miou']['real']:.2f} at {where})"
        )
    fastest = min(sweeps, key=sweeps.get)
    print(
        f"eval_100_real_s={evaluation:.2f} sweep_11x11_s={sweeps[fastest]:.0f} executor={fastest}"
    )


if __name__ == "__main__":
    main()
