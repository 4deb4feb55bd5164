"""Benchmark of the scene generator: images per second per domain, on one CPU core.

Each domain generates ``--images`` scenes (image, labels, instances, depth) at 128 x 256,
pinned to one core; the figure is the median of ``--repeats`` runs. The target is >= 100
images/s for every domain, so that training never waits on data. The last line is
machine-readable: ``min_images_per_s=<x> domain=<name>``.

Usage: ``python benchmarks/scenes.py [--images 200] [--repeats 3] [--size 128 256]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from lwmm_lab.data.domains import DOMAINS, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    size = tuple(args.size)
    rates = {}
    for domain in DOMAINS:
        generate(domain, "train", 10**6, size=size)  # warm the caches (noise tiles, grids)
        runs = []
        for r in range(args.repeats):
            started = time.perf_counter()
            for i in range(args.images):
                generate(domain, "train", r * args.images + i, size=size)
            runs.append(args.images / (time.perf_counter() - started))
        rates[domain] = statistics.median(runs)
        print(f"{domain:>13}: {rates[domain]:6.0f} images/s  ({1000 / rates[domain]:.1f} ms each)")
    slowest = min(rates, key=rates.get)
    print(f"min_images_per_s={rates[slowest]:.0f} domain={slowest}")


if __name__ == "__main__":
    main()
