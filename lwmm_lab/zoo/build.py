"""Building the zoo: train every run of the recipe, evaluate its checkpoints, write the manifest.

``build_zoo`` writes safetensors checkpoints (model spec in their metadata) and
``manifest.json``, one entry per checkpoint with its mIoU on the source val and every target
val. It is resumable: finished checkpoints are kept, and a run stopped midway continues from
its last checkpoint with the optimiser state saved beside it.

The base trains first, with every thread. On the CPU the other runs then train side by side,
one process per core with one thread each: small convolutions use two threads poorly, and two
runs at once finish about 1.6x sooner than one run on two threads (measured on the 2-core CPU:
0.113 s per MinEnt step instead of 0.179 s). On a GPU they train one after another.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lwmm_lab._version import __version__
from lwmm_lab.analysis.evaluation import evaluate
from lwmm_lab.analysis.panoptic import evaluate_panoptic
from lwmm_lab.data import labels as L
from lwmm_lab.data.domains import DOMAIN_CLASSES, TARGET_DOMAINS, generate
from lwmm_lab.engine.checkpoints import load_checkpoint, save_checkpoint
from lwmm_lab.engine.model import load_weights
from lwmm_lab.engine.panoptic import is_panoptic
from lwmm_lab.engine.pool import resolve_device
from lwmm_lab.errors import LwmmError, check_count, check_name, naming
from lwmm_lab.files import atomic_path, atomic_write_text, output_folder
from lwmm_lab.progress import progress_bar
from lwmm_lab.zoo.manifest import MANIFEST, default_zoo_dir, load_manifest, read_manifest
from lwmm_lab.zoo.recipe import BASE, Run, ZooConfig, run_fingerprint
from lwmm_lab.zoo.training import (
    STRATEGIES,
    ImagePool,
    TrainConfig,
    balanced_class_weights,
    train,
)


def build_zoo(
    out: str | os.PathLike | None = None,
    config: ZooConfig | None = None,
    device: str | torch.device = "auto",
    log: Callable[[str], None] = print,
    workers: int | None = None,
) -> dict[str, Any]:
    """Build (or finish building) the zoo in ``out``; returns the manifest as
    :func:`~lwmm_lab.zoo.manifest.load_manifest` reads it (each entry's path under ``out``:
    the file written holds them relative to it, which read from elsewhere named no file).

    ``workers`` runs train side by side after the base (default: one per core, up to 2, on the
    CPU; 4 on a GPU, where one small model's steps leave it mostly idle: the default zoo built
    in 109-119 s on an H100 with 4).
    """
    device = resolve_device(device)
    if workers is None:
        workers = min(2 if device.type == "cpu" else 4, os.cpu_count() or 1)
    workers = check_count("workers", workers)
    config = config or ZooConfig()
    for run in config.runs:
        with naming(f"run '{run.name}'"):
            check_name(run.strategy, STRATEGIES, "strategy")
    out = Path(out) if out is not None else default_zoo_dir(config.quick, config.seed)
    _check_folder(out, config)
    held = read_manifest(out)
    known = {e["path"]: e for e in held.get("checkpoints", [])}
    # The time spent building, over every call: a resume adds its own to what is recorded.
    started = time.perf_counter() - held.get("build_seconds", 0.0)
    data = _DataCache(out / "cache", config)
    data.prepare((BASE, *config.runs))
    done: dict[str, list[dict[str, Any]]] = {}

    def record(run: Run, entries: list[dict[str, Any]], seconds: float) -> None:
        """A finished run's checkpoints into the manifest (rewritten each time: resumable)."""
        done[run.name] = entries
        ordered = [e for r in (BASE, *config.runs) for e in done.get(r.name, [])]
        _write_manifest(out, config, ordered, time.perf_counter() - started)
        log(
            f"[zoo] {run.name}: {run.strategy}, {run.source} -> {'+'.join(run.targets) or '-'}, "
            f"from {'scratch' if run is BASE else 'the ' + run.init} ({seconds:.0f} s)"
        )

    base_path = _run_dir(out, BASE) / _step_name(config.base_steps)
    record(BASE, *_timed_run(BASE, config, out, base_path, str(device), known))
    jobs = [(run, config, out, base_path, str(device), known) for run in config.runs]
    bar = progress_bar(total=len(jobs), desc="zoo runs", unit="run")
    if workers > 1:
        spawn = multiprocessing.get_context("spawn")
        slot = spawn.Value("i", 0)
        with ProcessPoolExecutor(
            workers, mp_context=spawn, initializer=_worker, initargs=(slot,)
        ) as pool:
            futures = {pool.submit(_timed_run, *job): job[0] for job in jobs}
            for future in as_completed(futures):
                record(futures[future], *future.result())
                bar.update()
    else:
        for job in jobs:
            record(job[0], *_timed_run(*job))
            bar.update()
    bar.close()
    ordered = [e for r in (BASE, *config.runs) for e in done[r.name]]
    manifest = _write_manifest(out, config, ordered, time.perf_counter() - started)
    log(f"[zoo] {len(ordered)} checkpoints in {out} ({manifest['build_seconds']:.0f} s)")
    return load_manifest(out)


def _check_folder(out: Path, config: ZooConfig) -> None:
    """Refuse, in one line and before anything is written, a path that is not a folder, and a
    folder that holds a zoo of another seed or size (building there would retrain it into
    this one)."""
    output_folder(out, "the zoo (--out)")
    held = read_manifest(out).get("config")
    if held is None:
        return
    theirs = (held.get("seed", 0), bool(held.get("quick")))
    if theirs != (config.seed, config.quick):
        raise LwmmError(
            f"{out}: holds {_zoo_kind(*theirs)}, not {_zoo_kind(config.seed, config.quick)}; "
            "build into another folder (--out) or remove it"
        )


def _zoo_kind(seed: int, quick: bool) -> str:
    return f"{'a quick' if quick else 'a default'} zoo of seed {seed}"


#: The row of a run's progress bar (a worker's own: 1, 2, ...; the overall bar is row 0).
_BAR_ROW = 1


def _worker(slot: Any) -> None:
    """A worker process: one thread, and its own row for progress bars."""
    global _BAR_ROW
    torch.set_num_threads(1)
    with slot.get_lock():
        slot.value += 1
        _BAR_ROW = slot.value


def _timed_run(
    run: Run,
    config: ZooConfig,
    out: Path,
    base_path: Path,
    device: str,
    known: dict[str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], float]:
    """:func:`_train_run` in this process (a worker's entry point); entries and seconds."""
    began = time.perf_counter()
    data = _DataCache(out / "cache", config)
    entries = _train_run(run, config, out, base_path, data, torch.device(device), known)
    return entries, time.perf_counter() - began


# ---------------------------------------------------------------------------------- one run


def _train_run(
    run: Run,
    config: ZooConfig,
    out: Path,
    base_path: Path,
    data: _DataCache,
    device: torch.device,
    known: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Train one run, or finish it from its last checkpoint; returns its manifest entries."""
    is_base = run is BASE
    steps = config.base_steps if is_base else max(4, round(config.steps * run.steps_factor))
    checkpoint_steps = tuple(max(1, round(f * steps)) for f in run.fractions)
    spec = config.spec(run.arch, run.classes)
    fingerprint = run_fingerprint(run, config)
    folder = _run_dir(out, run)
    paths = {s: folder / _step_name(s) for s in checkpoint_steps}
    done = {s for s in checkpoint_steps if _finished(paths[s], fingerprint)}
    if len(done) < len(checkpoint_steps):
        start = max(done, default=0)
        state = _resume_state(folder, start, device) if start else None
        if state is None:
            start = 0  # no optimiser state beside the last checkpoint: train from the start
        torch.manual_seed(config.run_seed(run))
        model = spec.build(device)
        if start:
            load_weights(model, load_checkpoint(paths[start]).tensors, str(paths[start]))
        elif not is_base:
            _initialize_from(model, load_checkpoint(base_path).tensors, run.init)

        def on_checkpoint(step: int, state: dict[str, Any]) -> None:
            provenance = {
                "lwmm_lab": __version__,
                "zoo": {"run": run.name, "fingerprint": fingerprint, "step": step, "steps": steps},
                "run": asdict(run),
                "resolution": list(config.resolution),
            }
            save_checkpoint(paths[step], model.state_dict(), spec, provenance)
            with atomic_path(folder / "resume.pt") as tmp:
                torch.save(state, tmp)

        source = data.pool(run.source, "train", labels=True)
        classes = L.CLASS_SETS[run.classes]
        train_config = TrainConfig(
            steps=steps,
            class_weights=balanced_class_weights(source.labels, classes),
            batch_size=config.base_batch if is_base else config.batch,
            lr=config.base_lr if is_base else config.lr,
            head_lr_mult=1.0 if is_base else 10.0,
            warmup=steps // 20 if is_base else 0,
            seed=config.run_seed(run),
        )
        train(
            model,
            source,
            data.union(run.targets) if run.targets else None,
            run.strategy,
            train_config,
            classes=classes,
            checkpoint_steps=tuple(s for s in checkpoint_steps if s > start),
            on_checkpoint=on_checkpoint,
            resume=state,
            description=run.name,
            position=_BAR_ROW,
        )
        (folder / "resume.pt").unlink(missing_ok=True)
    return [
        _entry(run, out, paths[s], s, steps, fingerprint, data, device, known)
        for s in checkpoint_steps
    ]


def _resume_state(folder: Path, step: int, device: torch.device) -> dict[str, Any] | None:
    """The optimiser and strategy state saved with the checkpoint at ``step``, if any."""
    path = folder / "resume.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    return state if state.get("step") == step else None


def _entry(
    run: Run,
    out: Path,
    path: Path,
    step: int,
    steps: int,
    fingerprint: str,
    data: _DataCache,
    device: torch.device,
    known: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The manifest entry of a checkpoint, evaluated on its source val and every target val."""
    rel = _rel(out, path)
    if rel in known and known[rel].get("fingerprint") == fingerprint:
        return known[rel]  # evaluated before, and the checkpoint has not changed since
    ckpt = load_checkpoint(path)
    model = ckpt.spec.build(device, init=False)
    load_weights(model, ckpt.tensors, str(path))
    miou = {
        d: round(evaluate(model, data.val(d), d).miou, 3) for d in (run.source, *TARGET_DOMAINS)
    }
    panoptic = {}
    if is_panoptic(model):
        for d in (run.source, *run.targets):
            scores = evaluate_panoptic(model, data.val(d, instances=True))
            panoptic[d] = {k: round(getattr(scores, k), 3) for k in ("pq", "sq", "rq")}
    return {
        "path": rel,
        "run": run.name,
        "strategy": run.strategy,
        "scenarios": list(run.scenarios),
        "arch": ckpt.spec.arch,
        "encoder": ckpt.spec.encoder,
        "classes": run.classes,
        "num_classes": ckpt.spec.classes,
        "source": run.source,
        "targets": list(run.targets),
        "seed": run.seed,
        "init": run.init,
        "step": step,
        "fraction": round(step / steps, 4),
        "miou": miou,
        **({"panoptic": panoptic} if panoptic else {}),
        "fingerprint": fingerprint,
    }


def _initialize_from(model: nn.Module, base: dict[str, torch.Tensor], init: str) -> None:
    """Copy the base tensors the run starts from: every one whose name and shape the model
    shares (``init="base"``), or the encoder's alone (``init="encoder"``)."""
    own = model.state_dict()
    with torch.no_grad():
        for name, value in base.items():
            if init == "encoder" and not name.startswith("encoder."):
                continue
            if name in own and own[name].shape == value.shape:
                own[name].copy_(value)


# ------------------------------------------------------------------------------------- data


class _DataCache:
    """Training pools and val sets of the synthetic domains, generated once, cached as npz."""

    def __init__(self, folder: Path, config: ZooConfig) -> None:
        self.folder, self.config = folder, config
        self._pools: dict[tuple[str, str], ImagePool] = {}

    def pool(self, domain: str, split: str, labels: bool) -> ImagePool:
        """A domain's train or val images, with their labels or (a target's view) without."""
        n = self.config.train_images if split == "train" else self.config.val_images
        key = (domain, split)
        if key not in self._pools:
            self._pools[key] = ImagePool(*self._arrays(domain, split, n))
        pool = self._pools[key]
        return pool if labels else ImagePool(pool.images)

    def prepare(self, runs: tuple[Run, ...]) -> None:
        """Generate (or find cached) every training pool and val set that ``runs`` use, so
        runs training side by side only read them."""
        for run in runs:
            for domain in (run.source, *run.targets):
                self.pool(domain, "train", labels=True)
        for domain in {run.source for run in runs} | set(TARGET_DOMAINS):
            self.pool(domain, "val", labels=True)

    def union(self, domains: tuple[str, ...]) -> ImagePool:
        """The unlabelled images of several target domains, together."""
        images = np.concatenate([self.pool(d, "train", labels=False).images for d in domains])
        return ImagePool(images)

    def val(self, domain: str, instances: bool = False) -> torch.utils.data.TensorDataset:
        """The val set as tensors: images, labels (and instance ids)."""
        pool = self.pool(domain, "val", labels=True)
        images = torch.from_numpy(pool.images).permute(0, 3, 1, 2).float().div_(255)
        tensors = [images, torch.from_numpy(pool.labels.astype(np.int64))]
        if instances:
            tensors.append(torch.from_numpy(pool.instances.astype(np.int64)))
        return torch.utils.data.TensorDataset(*tensors)

    def _arrays(self, domain: str, split: str, n: int) -> tuple[np.ndarray, ...]:
        """Images, labels and instance ids of a domain's split (a cache without instance ids,
        from an older lwmm, is generated again)."""
        h, w = self.config.resolution
        path = self.folder / f"{domain}-{split}-{n}-{h}x{w}.npz"
        if path.is_file():
            with np.load(path) as z:
                if "instances" in z:
                    return z["images"], z["labels"], z["instances"]
        jobs = [(domain, split, i, (h, w)) for i in range(n)]
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            scenes = list(
                progress_bar(
                    pool.map(_generate, jobs, chunksize=16),
                    total=n,
                    desc=f"{domain} {split}",
                    leave=False,
                )
            )
        images = np.stack([s[0] for s in scenes])
        labels = np.stack([L.restrict(s[1], DOMAIN_CLASSES[domain]) for s in scenes])
        instances = np.stack([s[2] for s in scenes]).astype(np.uint16)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, instances=instances)
        return images, labels, instances


def _generate(job: tuple[str, str, int, tuple[int, int]]) -> tuple[np.ndarray, ...]:
    domain, split, index, size = job
    scene = generate(domain, split, index, 0, size)
    return scene.image, scene.label, scene.instances


# ---------------------------------------------------------------------------------- helpers


def _run_dir(out: Path, run: Run) -> Path:
    return out / "runs" / run.name


def _step_name(step: int) -> str:
    return f"step-{step:06d}.safetensors"


def _rel(out: Path, path: Path) -> str:
    return path.relative_to(out).as_posix()


def _finished(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        return load_checkpoint(path).zoo.get("fingerprint") == fingerprint
    except LwmmError:
        return False


def _write_manifest(
    out: Path, config: ZooConfig, entries: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    manifest = {
        "lwmm_lab": __version__,
        "config": asdict(replace(config, runs=())),
        "runs": [asdict(r) for r in (BASE, *config.runs)],
        "build_seconds": round(seconds, 1),
        "checkpoints": entries,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest
