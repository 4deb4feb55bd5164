"""The ``lwmm`` command line: merge, inspect, evaluate, analyse; build the zoo; the findings.

Bad input exits with status 1 and one line, ``lwmm: error: <what is wrong>``, never a
traceback; warnings print as ``lwmm: warning: ...``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from lwmm_lab._version import __version__
from lwmm_lab.analysis import findings, regimes
from lwmm_lab.analysis.discrepancy import (
    bn_divergence,
    discrepancy,
    suggest_start,
    task_vector_cosine,
)
from lwmm_lab.analysis.evaluation import evaluate_checkpoints
from lwmm_lab.analysis.panoptic import TASKS, evaluate_panoptic_checkpoints
from lwmm_lab.analysis.sweeps import EXECUTORS, grid, run_sweep
from lwmm_lab.data.datasets import open_dataset
from lwmm_lab.data.domains import DOMAINS, save_gallery
from lwmm_lab.engine.checkpoints import SUBMODELS, checkpoint_path, load_checkpoint
from lwmm_lab.engine.merge import MergeConfig, MergePlan, make_plan, save_merge
from lwmm_lab.engine.methods import BN_RULES, METHODS, SCHEDULES
from lwmm_lab.engine.model import load_model
from lwmm_lab.engine.pool import GRANULARITIES, Pool, resolve_device
from lwmm_lab.errors import LwmmError
from lwmm_lab.files import refuse_overwrite
from lwmm_lab.lab.figures import (
    bn_divergence_figure,
    counts_figure,
    discrepancy_figure,
    figure_path,
    page_path,
    save_figure,
    save_html,
    sweep_curves,
    sweep_heatmap,
    task_vector_figure,
)
from lwmm_lab.zoo import (
    PRESETS,
    ZooConfig,
    base_checkpoint,
    build_zoo,
    default_zoo_dir,
    find_zoo,
    load_manifest,
    preset,
)
from lwmm_lab.zoo.fisher import estimate_fisher, save_fisher
from lwmm_lab.zoo.manifest import scenario_checkpoints
from lwmm_lab.zoo.recipe import FAMILIES, SCENARIOS

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lwmm`` console script."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.handler(args)
        except LwmmError as e:
            print(f"lwmm: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("lwmm: interrupted", file=sys.stderr)
            return 130


def build_parser() -> argparse.ArgumentParser:
    """The ``lwmm`` command and its subcommands (what ``lwmm --help`` shows)."""
    parser = argparse.ArgumentParser(
        prog="lwmm", description="Layer-wise model merging of segmentation checkpoints."
    )
    parser.add_argument("--version", action="version", version=f"lwmm {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    merge = commands.add_parser("merge", help="merge checkpoints into one safetensors file")
    _add_merge_arguments(merge)
    merge.add_argument("-o", "--output", required=True, type=Path, help="OUT.safetensors")
    merge.set_defaults(handler=_merge)

    inspect = commands.add_parser("inspect", help="print the merge plan (a dry run)")
    _add_merge_arguments(inspect)
    inspect.add_argument("--json", action="store_true", help="the plan as a JSON list")
    inspect.set_defaults(handler=_inspect)

    data = commands.add_parser("data", help="the synthetic street-scene domains")
    data_commands = data.add_subparsers(required=True, metavar="DATA_COMMAND")
    gallery = data_commands.add_parser("gallery", help="one row per domain, as a PNG")
    gallery.add_argument("-o", "--output", required=True, type=Path, help="FILE.png")
    gallery.add_argument("--scenes", type=int, default=3, help="scenes per row (3)")
    gallery.add_argument("--seed", type=int, default=0)
    gallery.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    gallery.set_defaults(handler=_gallery)

    zoo = commands.add_parser("zoo", help="the model zoo trained on the synthetic domains")
    zoo_commands = zoo.add_subparsers(required=True, metavar="ZOO_COMMAND")
    build = zoo_commands.add_parser("build", help="train (or finish) the zoo; resumable")
    build.add_argument("--quick", action="store_true", help="a tiny zoo in well under a minute")
    build.add_argument("--out", type=Path, help="folder (data/zoo; data/zoo-quick with --quick)")
    build.add_argument("--device", default="auto", help="auto, cpu or cuda")
    build.add_argument(
        "--workers", type=int, help="runs trained side by side (default: 2 on a CPU, 4 on a GPU)"
    )
    build.add_argument(
        "--seed",
        type=int,
        default=0,
        help="0 (the published zoo) or another: every run's initialisation and data order change "
        "(default folder data/zoo-seedK)",
    )
    build.set_defaults(handler=_zoo_build)
    listing = zoo_commands.add_parser("list", help="the zoo's runs, or one scenario's checkpoints")
    listing.add_argument("scenario", nargs="?", help=f"one of {', '.join(SCENARIOS)}")
    listing.add_argument("--zoo", type=Path, help="zoo folder (data/zoo)")
    listing.add_argument("--paths", action="store_true", help="only the paths, anchor first")
    listing.set_defaults(handler=_zoo_list)
    bars = zoo_commands.add_parser("bars", help="measure the zoo against its bars (regimes)")
    bars.add_argument("--zoo", type=Path, help="zoo folder (data/zoo)")
    bars.add_argument("--images", type=int, default=100, help="real val images (100)")
    bars.add_argument("--json", action="store_true")
    bars.add_argument("--markdown", action="store_true", help="the README's table")
    bars.set_defaults(handler=_zoo_bars)

    ev = commands.add_parser("eval", help="mIoU and per-class IoU, or PQ (Cityscapes convention)")
    ev.add_argument("checkpoints", nargs="+", metavar="CKPT")
    ev.add_argument(
        "--task",
        default="semantic",
        help="semantic (mIoU) or panoptic (PQ, SQ, RQ and mIoU of a panoptic checkpoint)",
    )
    ev.add_argument(
        "--domain", default="real", help=f"{', '.join(DOMAINS)} or cityscapes:PATH, ..."
    )
    ev.add_argument("--split", default="val")
    ev.add_argument("--ensemble", action="store_true", help="average the models' softmax outputs")
    ev.add_argument("--images", type=int, help="evaluate on the first N images")
    ev.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize images to H x W")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--submodel", choices=SUBMODELS)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(handler=_eval)

    fisher = commands.add_parser("fisher", help="diagonal Fisher estimate on labelled data")
    fisher.add_argument("checkpoint", metavar="CKPT")
    fisher.add_argument("--domain", default="synthetic", help="a labelled (source) dataset")
    fisher.add_argument("--images", type=int, default=64)
    fisher.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    fisher.add_argument("--device", default="auto")
    fisher.add_argument("-o", "--output", required=True, type=Path, help="F.safetensors")
    fisher.set_defaults(handler=_fisher)

    disc = commands.add_parser(
        "discrepancy", help="per-layer distance between checkpoints (Fig. 2)"
    )
    disc.add_argument("checkpoints", nargs="*", metavar="CKPT", help="the first is the reference")
    disc.add_argument("--preset", choices=PRESETS, help="take the checkpoints from the zoo")
    disc.add_argument("--zoo", type=Path, default=default_zoo_dir(), help="zoo folder (data/zoo)")
    disc.add_argument("--run", default="advent", help="the run of the checkpoint preset (advent)")
    disc.add_argument(
        "--family",
        default="strategies",
        choices=list(FAMILIES),
        help="the models of the heterogeneous preset (strategies: from one source model)",
    )
    disc.add_argument("--tau", type=float, default=10.0, help="discrepant: relative L2 >= 1/tau")
    disc.add_argument("--base", type=Path, help="shared base, for task-vector cosines")
    _add_output_arguments(disc)
    disc.set_defaults(handler=_discrepancy)

    sweep = commands.add_parser("sweep", help="mIoU over start layer x alpha (Fig. 5b, 5c)")
    sweep.add_argument("checkpoints", nargs="+", metavar="CKPT")
    sweep.add_argument("--anchors", type=int, nargs="+", default=[0], help="anchor indices (0)")
    sweep.add_argument("--starts", type=float, nargs="+", help="start fractions (11 from 0 to 1)")
    sweep.add_argument("--alphas", type=float, nargs="+", help="alphas (11 from 0 to 1)")
    sweep.add_argument("--domains", nargs="+", default=["real", "synthetic"], help="target first")
    sweep.add_argument("--images", type=int, default=100, help="val images per domain (100)")
    sweep.add_argument("--method", default="layerwise", choices=list(METHODS))
    sweep.add_argument("--bn", default="linear", choices=list(BN_RULES))
    sweep.add_argument("--executor", default="serial", choices=EXECUTORS)
    sweep.add_argument(
        "--device",
        default="auto",
        help="where each cell merges and scores (auto: CUDA when there is one; a serial sweep "
        "then keeps everything on the GPU in this process)",
    )
    sweep.add_argument("--address", help="dask scheduler or ray cluster address")
    sweep.add_argument("--workers", type=int, help="processes for --executor process")
    sweep.add_argument("--no-cache", action="store_true", help="recompute every cell")
    _add_output_arguments(sweep)
    sweep.set_defaults(handler=_sweep)

    found = commands.add_parser("findings", help="the papers' claims, measured on the zoo")
    found.add_argument("--zoo", type=Path, help="zoo folder (data/zoo)")
    found.add_argument("--only", type=int, nargs="+", metavar="N", help="claim numbers (all)")
    found.add_argument("--images", type=int, default=100, help="val images per domain (100)")
    found.add_argument("--json", action="store_true", help="the findings as JSON")
    found.add_argument("--markdown", action="store_true", help="the findings as a Markdown table")
    found.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="K",
        help="one default zoo per seed (built or reused: data/zoo, data/zoo-seedK); every claim "
        "as mean and spread over them, a verdict only where all builds agree",
    )
    found.add_argument("--device", default="auto", help="where the seeds' zoos are built")
    found.set_defaults(handler=_findings)
    return parser


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--html", type=Path, help="write the figures to an HTML page")
    p.add_argument("--png", type=Path, help="write the main figure as a PNG")


def _add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files or smp dirs")
    p.add_argument("--anchor", default="0", help="anchor: input path or 0-based index (0)")
    p.add_argument("--method", default="layerwise", choices=list(METHODS))
    p.add_argument("--schedule", choices=list(SCHEDULES), help="override the method's schedule")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--start", type=int, help="depth index s where the decay starts (1)")
    start.add_argument("--start-frac", type=float, help="s as a fraction of depth, 0..1")
    p.add_argument("--alpha", type=float, help="the anchor's share before the decay (1/M)")
    p.add_argument("--bn", default="linear", choices=list(BN_RULES), help="BN statistics rule")
    p.add_argument("--weights", type=float, nargs="+", help="per-model weights")
    p.add_argument("--granularity", default="tensor", choices=GRANULARITIES)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--base", type=Path, help="shared base checkpoint (task_arithmetic, ties)")
    p.add_argument("--fisher", type=Path, nargs="+", help="one Fisher file per checkpoint")
    p.add_argument("--density", type=float, help="TIES: fraction kept (0.2)")
    p.add_argument("--scale", type=float, help="task vector scale (1.0)")
    p.add_argument("--submodel", choices=SUBMODELS, help="mmseg/DAFormer sub-model (model)")
    p.add_argument(
        "--align",
        action="store_true",
        help="first permute the other models' Unet decoder channels to match the anchor's "
        "(weight matching, Git Re-Basin)",
    )


def _plan(args: argparse.Namespace) -> tuple[Pool, MergePlan]:
    """The pool and plan of ``lwmm merge`` / ``inspect``. An option the plan would ignore is
    refused: a silent no-op (``--alpha`` on an isotropic merge) misleads more than an error."""
    pool = Pool(
        args.checkpoints,
        device=args.device,
        base=args.base,
        fisher=args.fisher,
        submodel=args.submodel,
        align=args.anchor if args.align else None,
    )
    knobs = {"density": args.density, "scale": args.scale}
    config = MergeConfig(
        method=args.method,
        anchor=args.anchor,
        start=args.start,
        start_frac=args.start_frac,
        alpha=args.alpha,
        bn=args.bn,
        weights=None if args.weights is None else tuple(args.weights),
        granularity=args.granularity,
        schedule=args.schedule,
        **{k: v for k, v in knobs.items() if v is not None},
    )
    plan = make_plan(pool, config)

    def methods(need: str) -> str:
        return "method " + " or ".join(n for n, m in METHODS.items() if need in m.needs)

    needs = METHODS[args.method].needs
    layerwise = (plan.schedule == "layerwise", "the layerwise schedule")
    uses = {
        "--start": layerwise,
        "--start-frac": layerwise,
        "--alpha": layerwise,
        "--weights": (plan.schedule == "weights", "the weights schedule (method weighted)"),
        "--density": (args.method == "ties", "method ties"),
        "--scale": ("base" in needs, methods("base")),
        "--base": ("base" in needs, methods("base")),
        "--fisher": ("fisher" in needs, methods("fisher")),
    }
    for option, (used, user) in uses.items():
        if getattr(args, option[2:].replace("-", "_")) is not None and not used:
            raise LwmmError(
                f"{option} is not used by this merge (method {args.method}, {plan.schedule} "
                f"schedule): only {user} uses it"
            )
    return pool, plan


def _merge(args: argparse.Namespace) -> int:
    checkpoint_path(args.output)
    pool, plan = _plan(args)
    path = save_merge(pool, args.output, plan.config)
    c = plan.config
    print(
        f"wrote {path}: {c.method} ({plan.schedule} schedule) of {pool.n_models} models, "
        f"anchor [{plan.anchor}] {pool.labels[plan.anchor]}, Np={plan.layout.n_depth}, bn {c.bn}"
    )
    for note in plan.notes():
        print(f"note: {note}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    _, plan = _plan(args)
    print(plan.to_json() if args.json else plan.format())
    return 0


def _gallery(args: argparse.Namespace) -> int:
    path = save_gallery(args.output, scenes=args.scenes, seed=args.seed, size=tuple(args.size))
    print(f"wrote {path}")
    return 0


def _zoo_build(args: argparse.Namespace) -> int:
    config = ZooConfig.quick_config() if args.quick else ZooConfig()
    if args.seed < 0:
        raise LwmmError(f"--seed {args.seed}: give 0 or a positive whole number")
    config = replace(config, seed=args.seed)
    build_zoo(args.out, config, device=args.device, workers=args.workers)
    return 0


def _zoo_list(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.zoo or find_zoo())
    if args.scenario is not None:
        paths = scenario_checkpoints(manifest, args.scenario)
        entries = [next(e for e in manifest["checkpoints"] if e["path"] == p) for p in paths]
    else:
        entries = [e for e in manifest["checkpoints"] if e["fraction"] == 1.0]
    if args.paths:
        print(" ".join(shlex.quote(e["path"]) for e in entries))
        return 0
    for e in entries:
        scenarios = ", ".join(e["scenarios"]) or "-"
        print(
            f"{e['run']}@{e['step']:<5} {e['arch']:<13} {e['num_classes']:>2} classes  "
            f"real {e['miou']['real']:5.1f}  ({scenarios})  {e['path']}"
        )
    return 0


def _zoo_bars(args: argparse.Namespace) -> int:
    rows = regimes.bars(args.zoo, images=args.images)
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.markdown:
        print(regimes.bars_table(rows))
    else:
        for r in rows:
            print(
                f"[{'met' if r['met'] else 'NOT MET'}] {r['family']}: {r['measurement']} = "
                f"{r['value']:+.2f} (bar {r['bar']})\n    {r['command']}"
            )
    return 0


def _eval(args: argparse.Namespace) -> int:
    size = tuple(args.size) if args.size else None
    if args.task not in TASKS:
        raise LwmmError(f"task '{args.task}' is not one of {', '.join(TASKS)}")
    if args.task == "panoptic":
        return _eval_panoptic(args, size)
    results = evaluate_checkpoints(
        args.checkpoints,
        domain=args.domain,
        split=args.split,
        ensemble=args.ensemble,
        images=args.images,
        size=size,
        device=args.device,
        submodel=args.submodel,
    )
    if args.json:
        return _print_json(results)
    for r in results:
        if args.ensemble:
            name = "ensemble of " + ", ".join(r.extra["checkpoints"])
        else:
            name = r.extra["checkpoint"]
        print(
            f"{name}: mIoU {r.miou:.2f} on {r.domain} "
            f"({r.images} images, {len(r.classes)} classes, {r.seconds:.1f} s)"
        )
        for cls, iou in r.per_class_iou.items():
            print(f"  {cls:<14} {'-' if iou is None else f'{iou:6.2f}'}")
    return 0


def _print_json(results: list) -> int:
    """One result as a JSON object, several as a list."""
    payload = [r.to_json() for r in results]
    print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=1))
    return 0


def _eval_panoptic(args: argparse.Namespace, size: tuple[int, int] | None) -> int:
    if args.ensemble:
        raise LwmmError("--ensemble is for the semantic task; a panoptic ensemble is not defined")
    results = evaluate_panoptic_checkpoints(
        args.checkpoints, args.domain, args.split, args.images, size, args.device
    )
    if args.json:
        return _print_json(results)
    for r in results:
        print(
            f"{r.extra['checkpoint']}: PQ {r.pq:.2f}  SQ {r.sq:.2f}  RQ {r.rq:.2f}  "
            f"mIoU {r.extra['miou']:.2f} on {args.domain} ({r.images} images)"
        )
        for cls, q in r.per_class.items():
            print(f"  {cls:<14} PQ {q['pq']:6.2f}  SQ {q['sq']:6.2f}  RQ {q['rq']:6.2f}")
    return 0


def _fisher(args: argparse.Namespace) -> int:
    checkpoint_path(args.output, "a Fisher estimate")
    refuse_overwrite(args.output, (args.checkpoint,))
    ckpt = load_checkpoint(args.checkpoint)
    model = load_model(ckpt, args.device)
    size = tuple(args.size) if args.size else tuple(ckpt.provenance.get("resolution", (128, 256)))
    dataset = open_dataset(args.domain, "train", size, size=args.images)
    fisher = estimate_fisher(model, dataset, args.images)
    path = save_fisher(args.output, fisher, ckpt, args.domain, min(args.images, len(dataset)))
    print(f"wrote {path}: diagonal Fisher of {len(fisher)} parameters on {args.domain}")
    return 0


def _discrepancy(args: argparse.Namespace) -> int:
    _check_outputs(args)
    paths, base = [str(p) for p in args.checkpoints], args.base
    if args.preset:
        manifest = load_manifest(args.zoo)
        reference, others = preset(manifest, args.preset, run=args.run, family=args.family)
        paths, base = [reference, *others], base or base_checkpoint(manifest)
    if len(paths) < 2:
        raise LwmmError("give at least two checkpoints (the first is the reference) or --preset")
    pool = Pool(paths, device="cpu", base=base)
    d = discrepancy(pool)
    bn = bn_divergence(pool)
    figures = [
        discrepancy_figure(d, args.tau),
        counts_figure(d, args.tau),
        bn_divergence_figure(bn),
    ]
    payload = d.to_json(args.tau) | {"bn_divergence": bn}
    if base is not None:
        tv = task_vector_cosine(pool)
        suggestion = suggest_start(tv, d.n_depth)
        figures.append(task_vector_figure(tv, suggestion))
        payload |= {"task_vector_cosine": tv, "suggested_start": suggestion}
    _write_outputs(args, payload, figures)
    if not args.json:
        cut = d.threshold(args.tau)
        print(f"reference {d.reference}, tau {args.tau:g} (relative L2 >= {cut:.3g})")
        for model, c in d.counts(args.tau).items():
            kinds = ", ".join(f"{k} {n}" for k, n in c["kind"].items() if n)
            regions = ", ".join(f"{k} {n}" for k, n in c["region"].items())
            print(
                f"  {model}: {c['total']} tensors above ({kinds or 'none'}); by region: {regions}"
            )
        if "suggested_start" in payload:
            s = payload["suggested_start"]
            print(f"suggested start layer from task-vector agreement: s = {s}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    _check_outputs(args)
    resolution = tuple(
        load_checkpoint(args.checkpoints[0]).provenance.get("resolution", (128, 256))
    )
    cells = grid(
        args.checkpoints,
        starts=args.starts or [k / 10 for k in range(11)],
        alphas=args.alphas or [k / 10 for k in range(11)],
        anchors=args.anchors,
        method=args.method,
        bn=args.bn,
        domains=tuple(args.domains),
        images=args.images,
        resolution=resolution,
        device=str(resolve_device(args.device)),
    )
    result = run_sweep(
        cells,
        args.executor,
        args.address,
        args.workers,
        cache=not args.no_cache,
    )
    target = args.domains[0]
    figures = [sweep_heatmap(result, d, anchor=a) for a in args.anchors for d in args.domains]
    figures.append(sweep_curves(result, args.domains, anchor=args.anchors[0]))
    _write_outputs(args, result.to_json(), figures)
    if not args.json:
        best = max(result.results, key=lambda r: r["miou"][target])
        scores = ", ".join(f"{d} {v:.2f}" for d, v in best["miou"].items())
        print(
            f"{len(cells)} cells ({result.scored} merges scored, the rest cached or the same "
            f"merge as another); best on {target}: anchor {best['anchor']}, s = {best['start']}, "
            f"alpha = {best['alpha']:.2f} ({scores})"
        )
    return 0


def _findings(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        return _seeded_findings(args)
    results = findings.measure(args.zoo, images=args.images, only=args.only)
    if args.json:
        print(json.dumps(findings.to_json(results), indent=1))
    elif args.markdown:
        print(findings.table(results))
        print()
        print(findings.explanations(results))
    else:
        for f in results:
            print(f"{f.number:>2}. {f.claim} ({f.source})")
            print(f"    paper: {f.paper}")
            for family, r in f.results.items():
                print(f"    {findings.FAMILY_TITLES[family]}: [{r.holds}] {r.ours}")
                print(f"      why: {r.why}")
            print(f"    run:   {f.command}")
    return 0


def _seeded_findings(args: argparse.Namespace) -> int:
    if args.zoo is not None:
        raise LwmmError("--seeds uses one zoo per seed (data/zoo, data/zoo-seedK); drop --zoo")
    results, facts = findings.measure_seeds(
        args.seeds, images=args.images, only=args.only, device=args.device
    )
    if args.json:
        print(json.dumps(findings.seeded_json(results, facts), indent=1))
    else:
        print(findings.seeded_table(results, facts))
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse a bad ``--html`` / ``--png`` name before the work whose figures it would hold."""
    if args.html:
        page_path(args.html)
    if args.png:
        figure_path(args.png)


def _write_outputs(args: argparse.Namespace, payload: object, figures: list) -> None:
    if args.json:
        print(json.dumps(payload, indent=1))
    if args.html:
        save_html(figures, args.html)
    if args.png:
        save_figure(figures[0], args.png)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """Warnings as one ``lwmm: warning:`` line, like errors (``warnings.showwarning``)."""
    print(f"lwmm: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
