"""Benchmark of the merge engine: re-merge time, a naive loop, a memory floor, peak memory.

For M checkpoints of an smp Unet/resnet18 (about 14.3M parameters) it reports:

- ``remerge``: one layer-wise merge with new settings, pool already built, written into the
  state dict of the module the lab writes into (:func:`~lwmm_lab.engine.model.merge_target`,
  laid out in the pool's column order): what a widget does on a slider change, plan included;
  timed in turn with the others below (``remerge``), and alone, one re-merge after another as
  a slider's drag makes them (``alone``): on a GPU a re-merge is host time, which the naive
  loop's Python run before it slows (it leaves the host's caches cold); where the fused
  kernel runs (:mod:`lwmm_lab.engine.fused`), alone with torch ops instead too;
- ``naive``: the per-key Python loop of typical merge scripts, ``sum(w_i * sd_i[k])``, with
  the same weights;
- ``floor``: one pass over the stacked tensors (the faster of ``flat.sum(0)`` and a single
  matrix-vector product over the whole flat buffer): no merge can read less;
- ``peak extra``: the highest memory while building the pool and merging, above the memory
  held before (the M state dicts already loaded), in model sizes: resident memory on the CPU,
  GPU memory allocated on CUDA (the pool's stack is then all extra);
- on a GPU, the GPU's own time per call (:func:`profiled_ms`: the kernels' device time) of the
  re-merge, with torch ops for the fused kernel too, and of the floor: the host's time comes on
  top of it; and the re-merge's host time in CUDA API calls (the graph's launch, the upload of
  the plan's tables), the rest of its host time being Python;
- ``fisher``, ``ties``, ``task_arithmetic``: one merge by each non-linear method (layer-wise
  schedule, a base and a Fisher per model in the pool), written into the same state dict.

Each M runs in a fresh process, so the kernel's peak-RSS counter is its own. With a built zoo
(``--zoo``, default ``data/zoo`` when it exists) it also times what a slider change costs on
the zoo's model (1.4M parameters, about 300 state entries, six models): ``make_plan`` and
``plan.run`` into the state dict of the lab's merge target (kept as the lab keeps it), and
the host's share of that on a GPU (:func:`host_ms`: the zoo's layout with one value per
tensor, on the GPU's whole-row path, so that what is timed is Python and dispatch, measurable
on any machine). The last line is machine-readable:
``M=5 speedup_vs_naive=<x> time_vs_floor=<y> alone_vs_floor=<a> peak_extra_model_sizes=<z>``.

Usage: ``python benchmarks/merge.py [--models 2 5 10] [--repeats 31] [--device auto|cpu|cuda]
[--zoo DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.autograd import DeviceType

from lwmm_lab import Checkpoint, ModelSpec, Pool, make_plan, merge
from lwmm_lab.engine.fused import fused_enabled
from lwmm_lab.engine.model import merge_target
from lwmm_lab.engine.pool import resolve_device

SPEC = ModelSpec("Unet", "resnet18", 19)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--zoo", type=Path, help="a built zoo (data/zoo when it exists)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats, args.device)))
        return
    results = []
    for n in args.models:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(n),
            "--repeats",
            str(args.repeats),
            "--device",
            args.device,
        ]
        line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[
            -1
        ]
        results.append(json.loads(line))
    print(
        f"smp {SPEC.arch}/{SPEC.encoder}: {results[0]['params'] / 1e6:.1f}M parameters, "
        f"{results[0]['model_mb']:.1f} MB; device {results[0]['device']}, "
        f"{torch.get_num_threads()} threads"
    )
    header = (
        "M", "build s", "remerge ms", "naive ms", "floor ms", "vs naive", "vs floor", "alone ms",
        "alone/floor", "peak",
    )  # fmt: skip
    print("".join(f"{h:>12}" for h in header))
    for r in results:
        cells = (
            f"{r['M']}",
            f"{r['build_s']:.2f}",
            f"{r['remerge_ms']:.2f}",
            f"{r['naive_ms']:.2f}",
            f"{r['floor_ms']:.2f}",
            f"{r['speedup_vs_naive']:.1f}x",
            f"{r['time_vs_floor']:.2f}x",
            f"{r['remerge_alone_ms']:.2f}",
            f"{r['alone_vs_floor']:.2f}x",
            f"{r['peak_extra_model_sizes']:.2f} M",
        )
        print("".join(f"{c:>12}" for c in cells))
    if results[0]["unfused_alone_ms"] is not None:
        print(
            "re-merge alone with torch ops for the fused kernel (LWMM_TRITON=0): "
            + ", ".join(f"M={r['M']} {r['unfused_alone_ms']:.2f} ms" for r in results)
        )
    for r in results:
        if "remerge_gpu_ms" in r:
            unfused = r.get("unfused_gpu_ms")
            print(
                f"M={r['M']}, the GPU's own time per call (its kernels, torch.profiler): re-merge "
                f"{r['remerge_gpu_ms']:.3f} ms"
                + (f" ({unfused:.3f} ms with torch ops)" if unfused is not None else "")
                + f", floor {r['floor_gpu_ms']:.3f} ms"
            )
            calls = sorted(r["remerge_host_calls_ms"].items(), key=lambda kv: -kv[1])
            print(
                f"M={r['M']}, the host's time per re-merge in CUDA calls (torch.profiler): "
                + (", ".join(f"{name} {ms:.3f} ms" for name, ms in calls[:6]) or "none")
                + f"; {sum(ms for _, ms in calls):.3f} ms in all"
            )
    print("non-linear methods, one layer-wise merge (ms):")
    print("".join(f"{h:>16}" for h in ("M", *NONLINEAR)))
    for r in results:
        print("".join(f"{c:>16}" for c in (r["M"], *(f"{r[f'{m}_ms']:.1f}" for m in NONLINEAR))))
    zoo = args.zoo or (Path("data/zoo") if (Path("data/zoo") / "manifest.json").is_file() else None)
    if zoo is not None:
        plan_ms, run_ms, n = zoo_remerge(zoo, args.repeats * 5, args.device)
        print(
            f"zoo model, {n} models: make_plan {plan_ms:.2f} ms, plan.run(into=state dict) "
            f"{run_ms:.2f} ms (medians of {args.repeats * 5})"
        )
        host = host_ms(zoo, args.repeats * 20)
        print(
            f"host time of a GPU re-merge of the zoo model (its layout, one value per tensor, "
            f"whole-row path): make_plan {host['plan']:.3f} ms, run into a laid-out target "
            f"{host['laid out']:.3f} ms, into a plain state dict {host['plain']:.3f} ms "
            f"(medians of {args.repeats * 20})"
        )
    r5 = next((r for r in results if r["M"] == 5), results[-1])
    print(
        f"M={r5['M']} speedup_vs_naive={r5['speedup_vs_naive']:.2f} "
        f"time_vs_floor={r5['time_vs_floor']:.2f} alone_vs_floor={r5['alone_vs_floor']:.2f} "
        f"peak_extra_model_sizes={r5['peak_extra_model_sizes']:.2f}"
    )


def measure(n_models: int, repeats: int, device: str) -> dict[str, float]:
    torch.manual_seed(0)
    state = SPEC.build().state_dict()
    checkpoints = [
        Checkpoint({k: _perturbed(v) for k, v in state.items()}, spec=SPEC) for _ in range(n_models)
    ]
    model_bytes = sum(v.numel() * v.element_size() for v in state.values())
    params = sum(v.numel() for v in state.values())
    del state
    gc.collect()
    _return_freed_memory()

    cuda = resolve_device(device).type == "cuda"
    before = torch.cuda.memory_allocated() if cuda else _rss_kb() * 1024
    _reset_peak(cuda)
    started = time.perf_counter()
    pool = Pool(checkpoints, device=device)
    build_s = time.perf_counter() - started
    merged = merge_target(pool, 0).state_dict()
    merge(pool, into=merged, alpha=0.5)
    settings = [{"alpha": a, "start": s} for a in (0.2, 0.5, 0.8) for s in (1, 40, 120)]
    for k in range(len(settings)):
        merge(pool, into=merged, **settings[k])
    peak_extra = (_peak_bytes(cuda) - before) / model_bytes

    on_device = [{k: v.to(pool.device) for k, v in c.tensors.items()} for c in checkpoints]
    plan = make_plan(pool, alpha=0.5)
    weights = {r["name"]: r["weights"] for r in plan.rows() if r["weights"] is not None}
    out = torch.empty(pool.flat.shape[1], dtype=pool.flat.dtype, device=pool.device)
    ones = torch.full((n_models,), 1.0 / n_models, dtype=pool.flat.dtype, device=pool.device)
    candidates = {
        "remerge": lambda k: merge(pool, into=merged, **settings[k % len(settings)]),
        "naive": lambda k: naive_merge(on_device, weights),
        "floor_sum": lambda k: torch.sum(pool.flat, 0, out=out),
        "floor_mv": lambda k: torch.mv(pool.flat.t(), ones, out=out),
    }
    ms = _interleaved_medians_ms(candidates, repeats, pool.device)
    alone = _interleaved_medians_ms({"remerge": candidates["remerge"]}, repeats, pool.device)
    gpu, host_calls = {}, {}
    if cuda:
        gpu["remerge"], host_calls = profiled_ms(candidates["remerge"], repeats)
        gpu["floor"] = min(
            profiled_ms(candidates[f], repeats)[0] for f in ("floor_sum", "floor_mv")
        )
    if fused_enabled(pool.device):  # the same, with the torch ops for the fused kernel
        with _torch_ops_for_the_fused_kernel():
            alone["unfused"] = _interleaved_medians_ms(
                {"remerge": candidates["remerge"]}, repeats, pool.device
            )["remerge"]
            gpu["unfused"] = profiled_ms(candidates["remerge"], repeats)[0]
    ms.update(nonlinear_ms(checkpoints, merged, max(3, repeats // 4), device))
    remerge, naive = ms["remerge"], ms["naive"]
    floor = min(ms["floor_sum"], ms["floor_mv"])
    return {
        "M": n_models,
        "device": str(pool.device),
        "params": params,
        "model_mb": model_bytes / 2**20,
        "build_s": build_s,
        "remerge_ms": remerge,
        "naive_ms": naive,
        "floor_ms": floor,
        "speedup_vs_naive": naive / remerge,
        "time_vs_floor": remerge / floor,
        "remerge_alone_ms": alone["remerge"],
        "alone_vs_floor": alone["remerge"] / floor,
        "unfused_alone_ms": alone.get("unfused"),
        **{f"{k}_gpu_ms": v for k, v in gpu.items()},
        "remerge_host_calls_ms": host_calls,
        "peak_extra_model_sizes": peak_extra,
        **{f"{m}_ms": ms[m] for m in NONLINEAR},
    }


def profiled_ms(fn: Callable[[int], object], n: int) -> tuple[float, dict[str, float]]:
    """Per call of ``fn``, over ``n`` calls under ``torch.profiler``, each waited for as
    :func:`_interleaved_medians_ms` does: the GPU's own time (its kernels' and copies' device
    time, a CUDA graph's replayed kernels included), and the host's time in each CUDA API call
    it makes (``cudaGraphLaunch``, ``cudaMemcpyAsync``, ``cudaStreamSynchronize``, ...; not the
    wait after each call). What the host's time comes on top of, and how much of that host
    time is the CUDA calls' rather than Python's."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        for k in range(n):
            fn(k)
            torch.cuda.synchronize()
    events = profile.key_averages()
    on_device = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    calls = {
        e.key: e.self_cpu_time_total / n / 1000
        for e in events
        if e.device_type == DeviceType.CPU
        and e.key.startswith("cu")
        and e.key != "cudaDeviceSynchronize"  # the wait after each call
    }
    return on_device / n / 1000, calls


@contextlib.contextmanager
def _torch_ops_for_the_fused_kernel() -> Iterator[None]:
    """``LWMM_TRITON=0`` while inside: the whole-row lerp as torch ops."""
    os.environ["LWMM_TRITON"] = "0"
    try:
        yield
    finally:
        del os.environ["LWMM_TRITON"]


NONLINEAR = ("fisher", "ties", "task_arithmetic")


def nonlinear_ms(
    checkpoints: list[Checkpoint], into: dict[str, torch.Tensor], repeats: int, device: str
) -> dict[str, float]:
    """Median ms of one merge by each non-linear method, layer-wise schedule, into ``into``."""
    base = Checkpoint({k: _perturbed(v) for k, v in checkpoints[0].tensors.items()})
    fisher = [
        Checkpoint({k: v.float().square() for k, v in c.tensors.items()}) for c in checkpoints
    ]
    pool = Pool(checkpoints, device=device, base=base, fisher=fisher)
    return _interleaved_medians_ms(
        {
            m: lambda k, m=m: merge(
                pool, into=into, method=m, schedule="layerwise", alpha=0.5, density=0.2
            )
            for m in NONLINEAR
        },
        repeats,
        pool.device,
    )


def zoo_remerge(zoo: Path, repeats: int, device: str) -> tuple[float, float, int]:
    """Median ms of ``make_plan`` and of ``plan.run`` into the model's state dict (what the lab
    and the sweeps keep and write into) over slider-like changes of alpha and start, on the
    zoo's independent strategies (the lab's opening scenario)."""
    from lwmm_lab.zoo import load_manifest
    from lwmm_lab.zoo.manifest import scenario_checkpoints

    pool = Pool(scenario_checkpoints(load_manifest(zoo), "independent"), device=device)
    tensors = merge_target(pool, 0).state_dict()
    settings = _slider_settings(pool, repeats)
    plans = []

    def plan(k: int) -> None:
        plans.append(make_plan(pool, **settings[k % repeats]))

    ms = _interleaved_medians_ms({"plan": plan}, repeats, pool.device)
    run = _interleaved_medians_ms(
        {"run": lambda k: plans[k % len(plans)].run(into=tensors)}, repeats, pool.device
    )
    return ms["plan"], run["run"], pool.n_models


def host_ms(zoo: Path, repeats: int) -> dict[str, float]:
    """Median ms of ``make_plan`` and ``plan.run`` on the zoo's layout (the independent
    strategies: six models, 302 entries) with one value per tensor, on the whole-row path a
    GPU takes (:data:`~lwmm_lab.engine.merge.FLAT_SUM`): the arithmetic is next to nothing, so
    this is the Python and dispatch time of a re-merge, which a GPU cannot hide and which
    bounds its re-merge of a small model. Into a laid-out target (the lab's) and into a plain
    state dict."""
    from lwmm_lab.engine import merge as engine
    from lwmm_lab.engine.checkpoints import load_checkpoint
    from lwmm_lab.engine.target import lay_out
    from lwmm_lab.zoo import load_manifest
    from lwmm_lab.zoo.manifest import scenario_checkpoints

    checkpoints = []
    for path in scenario_checkpoints(load_manifest(zoo), "independent"):
        ckpt = load_checkpoint(path)
        one = {k: v.reshape(-1)[:1].clone() for k, v in ckpt.tensors.items()}
        checkpoints.append(ckpt.with_tensors(one))
    pool = Pool(checkpoints, device="cpu")
    plain = {k: v.clone() for k, v in checkpoints[0].tensors.items()}
    laid_out = lay_out({k: v.clone() for k, v in plain.items()}, pool)
    settings = _slider_settings(pool, repeats)
    plans = [make_plan(pool, **setting) for setting in settings]
    flat_sum = engine.FLAT_SUM["cpu"]
    engine.FLAT_SUM["cpu"] = True
    try:
        return _interleaved_medians_ms(
            {
                "plan": lambda k: make_plan(pool, **settings[k % repeats]),
                "laid out": lambda k: plans[k % repeats].run(into=laid_out),
                "plain": lambda k: plans[k % repeats].run(into=plain),
            },
            repeats,
            pool.device,
        )
    finally:
        engine.FLAT_SUM["cpu"] = flat_sum


def _slider_settings(pool: Pool, n: int) -> list[dict[str, float]]:
    """``n`` slider-like changes of alpha and start over the pool's depths."""
    depth = pool.layout().n_depth
    return [{"alpha": (k % 11) / 10, "start": 1 + (7 * k) % depth} for k in range(n)]


def _perturbed(t: torch.Tensor) -> torch.Tensor:
    return t + 0.01 * torch.randn_like(t) if t.is_floating_point() else t.clone()


def naive_merge(
    state_dicts: list[dict[str, torch.Tensor]], weights: dict[str, list[float]]
) -> dict:
    """How typical merge scripts do it: a Python loop over keys, one tensor op per model."""
    merged = {}
    for key, value in state_dicts[0].items():
        w = weights.get(key)
        merged[key] = (
            value.clone()
            if w is None
            else sum(wi * sd[key] for wi, sd in zip(w, state_dicts, strict=True))
        )
    return merged


def _interleaved_medians_ms(
    fns: dict[str, Callable[[int], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median time of each function, run round-robin so machine noise hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for k in range(repeats + 1):
        for name, fn in fns.items():
            _sync(device)
            started = time.perf_counter()
            fn(k)
            _sync(device)
            if k:  # round 0 warms up
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _return_freed_memory() -> None:
    """Give the heap's freed pages back to the kernel (glibc ``malloc_trim``), so that what is
    allocated after this shows in the resident memory instead of reusing pages freed before
    the measurement began."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_kb() -> int:
    return _status_kb("VmRSS")


def _peak_bytes(cuda: bool) -> int:
    """The peak since :func:`_reset_peak`: GPU memory allocated on CUDA, else resident memory."""
    return torch.cuda.max_memory_allocated() if cuda else _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak(cuda: bool) -> None:
    """Reset the peak counter: PyTorch's on CUDA, else the kernel's peak RSS (VmHWM) to the
    current RSS (Linux >= 4.0)."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


if __name__ == "__main__":
    main()
