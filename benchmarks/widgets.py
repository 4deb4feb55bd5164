"""Benchmark of the MergeLab panel: from a slider change to an updated mIoU and image grid.

The default zoo's six independent strategies in one MergeLab, the lab's opening scenario
(preview: 16 target + 16 source images at the zoo's resolution). Each slider change re-merges
into the anchor's module, re-scores the previews, and updates the schedule, the per-class bars,
the readout and the image grid; the figure is the median over many changes of alpha and of the
start layer, printed with the median of each step (plan, merge, score, figures, grid). Ticking
*align* and changing the anchor while aligned (a new weight matching) are timed too, and alpha
changes with the merge's BN statistics measured on the target's images (AdaBN). Target:
<= 300 ms on a 2-core CPU. Measured in-process (``background=False``), so the time of the
kernel's messages to the browser is not included; the browser test shows the update arriving
there.

On a GPU the previews' forward pass is replayed from a CUDA graph; ``--eager`` times it without
(``LWMM_CUDA_GRAPHS=0``). ``--profile`` then shows where the time of alpha changes goes: the
Python functions with the most time of their own (cProfile) and PyTorch's operators and kernels
(``torch.profiler``), to see what a GPU's host spends a change on.

The last line is machine-readable: ``slider_update_ms_median=<x> start_update_ms_median=<y>
adabn_update_ms_median=<z>``.

Usage: ``python benchmarks/widgets.py [--zoo data/zoo] [--eager] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time

import torch

from lwmm_lab.lab import MergeLab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=None)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs on a GPU")
    parser.add_argument("--profile", action="store_true", help="where alpha changes' time goes")
    args = parser.parse_args()
    if args.eager:
        os.environ["LWMM_CUDA_GRAPHS"] = "0"
    started = time.perf_counter()
    lab = MergeLab(zoo=args.zoo, background=False)
    print(
        f"MergeLab with {lab.pool.n_models} models ready in {time.perf_counter() - started:.1f} s"
    )

    parts: dict[str, list[float]] = {}

    def timed(control: object, values: list) -> list[float]:
        times = []
        for value in values:
            t = time.perf_counter()
            control.value = value
            times.append((time.perf_counter() - t) * 1000)
            if lab.last_error is not None:  # the lab shows it in its error box: not a timing
                raise SystemExit(
                    f"widgets benchmark: {control.description} = {value!r} failed in the lab: "
                    f"{type(lab.last_error).__name__}: {lab.last_error}"
                )
            for part, ms in lab.last_update_parts.items():
                parts.setdefault(part, []).append(ms)
        return times

    alphas = [round(0.05 * k, 2) for k in range(21)] + [
        round(1 - 0.05 * k, 2) for k in range(1, 21)
    ]
    starts = [max(1, round(lab.start.max * k / 20)) for k in range(1, 21)]
    alpha_ms, start_ms = timed(lab.alpha, alphas), timed(lab.start, starts)
    for name, values in (("alpha", alpha_ms), ("start", start_ms)):
        q = statistics.quantiles(values, n=10)
        median = statistics.median(values)
        print(f"{name}: median {median:.0f} ms, p90 {q[-1]:.0f} ms over {len(values)} changes")
    split = ", ".join(f"{p} {statistics.median(ms):.1f}" for p, ms in parts.items())
    print(f"a change's steps (medians, ms of host time on {lab.pool.device}): {split}")
    lab.reestimate.value = True
    parts.clear()
    adabn_ms = timed(lab.alpha, alphas[:21])
    print(
        f"with BN statistics from {lab.reestimate_images} target images (AdaBN): alpha median "
        f"{statistics.median(adabn_ms):.0f} ms, of which re-estimating "
        f"{statistics.median(parts['BN statistics']):.0f} ms"
    )
    lab.reestimate.value = False
    align_ms = timed(lab.align, [True])[0]
    anchor_ms = statistics.median(timed(lab.anchor, [1, 2, 0]))
    print(
        f"align on (weight matching of {lab.pool.n_models - 1} decoders, re-merge, re-score): "
        f"{align_ms:.0f} ms; anchor change while aligned (re-align): median {anchor_ms:.0f} ms"
    )
    print(
        f"slider_update_ms_median={statistics.median(alpha_ms):.0f} "
        f"start_update_ms_median={statistics.median(start_ms):.0f} "
        f"adabn_update_ms_median={statistics.median(adabn_ms):.0f}"
    )
    if args.profile:
        profile(lab, alphas[:21])


def profile(lab: MergeLab, alphas: list[float]) -> None:
    """Print where the time of these alpha changes goes: the Python functions with the most
    time of their own, then PyTorch's operators by their host time and, on a GPU, its kernels
    by their device time."""
    python = cProfile.Profile()
    python.enable()
    for value in alphas:
        lab.alpha.value = value
    python.disable()
    print(f"Python's profile of {len(alphas)} alpha changes:")
    pstats.Stats(python).sort_stats("tottime").print_stats(25)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if lab.pool.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as torch_profile:
        for value in alphas:
            lab.alpha.value = value
    averages = torch_profile.key_averages()
    print(f"PyTorch's profile of {len(alphas)} alpha changes:")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=25))
    if lab.pool.device.type == "cuda":
        print(averages.table(sort_by="self_device_time_total", row_limit=15))


if __name__ == "__main__":
    main()
