"""The ``lwmm`` command line: merge, inspect, evaluate, analyse; build the zoo; the findings.

Bad input exits with status 1 and one line, ``lwmm: error: <what is wrong>``, never a
traceback; warnings print as ``lwmm: warning: ...``.

Each command imports what it runs when it runs, and the options' choices that live next to
torch (the merge methods, say) are looked up when an option is checked or its help printed:
``lwmm --help`` and ``lwmm zoo list`` answer in a fraction of a second, not in the seconds
that importing torch and smp takes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, overload

from lwmm_lab._version import __version__
from lwmm_lab.data.domains import DOMAINS
from lwmm_lab.errors import LwmmError, check_name, check_seed
from lwmm_lab.files import refuse_overwrite
from lwmm_lab.zoo.manifest import (
    PRESETS,
    base_checkpoint,
    default_zoo_dir,
    find_zoo,
    load_manifest,
    preset,
    quality_table,
    scenario_checkpoints,
    select,
)
from lwmm_lab.zoo.recipe import FAMILIES, SCENARIOS

if TYPE_CHECKING:
    from lwmm_lab.engine.merge import MergePlan
    from lwmm_lab.engine.pool import Pool
    from lwmm_lab.engine.spec import ModelSpec


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lwmm`` console script."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            status = args.handler(args)
            sys.stdout.flush()
            return status
        except LwmmError as e:
            print(f"lwmm: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("lwmm: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # The reader stopped reading (``lwmm zoo list | head -1``): say nothing more, and
            # point stdout at nothing so that Python's last flush of it does not fail too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


class Names(Sequence[str]):
    """The names of a registry or tuple in another module, read on first use: ``choices``
    for argparse, which only looks at them to check a given value or to print help."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The names, imported from their module the first time they are asked for."""
        return tuple(getattr(importlib.import_module(self.module), self.name))

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return self.names[i]

    def __len__(self) -> int:
        return len(self.names)


METHOD_NAMES = Names("lwmm_lab.engine.methods", "METHODS")
SCHEDULE_NAMES = Names("lwmm_lab.engine.methods", "SCHEDULES")
BN_RULE_NAMES = Names("lwmm_lab.engine.methods", "BN_RULES")
GRANULARITY_NAMES = Names("lwmm_lab.engine.pool", "GRANULARITIES")
SUBMODEL_NAMES = Names("lwmm_lab.engine.checkpoints", "SUBMODELS")
EXECUTOR_NAMES = Names("lwmm_lab.analysis.sweeps", "EXECUTORS")
SWEEP_METHOD_NAMES = Names("lwmm_lab.analysis.sweeps", "SWEEP_METHODS")


#: What a ``--size`` that defaults to a checkpoint's recorded resolution says it falls back to:
#: :data:`~lwmm_lab.engine.checkpoints.DEFAULT_RESOLUTION` (not imported: the parser stays light).
_RECORDED_SIZE = "the resolution {} records, else 128 256"


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
    merge.add_argument(
        "--reestimate",
        nargs="+",
        metavar="DOMAIN",
        help="then measure the merge's BN statistics on unlabelled train images of each DOMAIN "
        "(interleaved; AdaBN) instead of merging the checkpoints'",
    )
    merge.add_argument(
        "--reestimate-images", type=int, help="train images per DOMAIN for --reestimate (100)"
    )
    _add_size(merge, f"read --reestimate's images at H x W ({_RECORDED_SIZE.format('the anchor')})")
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
    gallery.add_argument("--seed", type=int, default=0, help="the scenes' seed (0)")
    _add_size(gallery, "image size (128 256)", (128, 256))
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
    listing_format = listing.add_mutually_exclusive_group()
    listing_format.add_argument("--paths", action="store_true", help="only the paths, anchor first")
    listing_format.add_argument(
        "--markdown", action="store_true", help="the README's quality table (mIoU per val set)"
    )
    listing.set_defaults(handler=_zoo_list)
    bars = zoo_commands.add_parser("bars", help="measure the zoo against its bars (regimes)")
    bars.add_argument("--zoo", type=Path, help="zoo folder (data/zoo)")
    bars.add_argument("--images", type=int, default=100, help="real val images (100)")
    bars_format = bars.add_mutually_exclusive_group()
    bars_format.add_argument("--json", action="store_true", help="the bars as JSON")
    bars_format.add_argument("--markdown", action="store_true", help="the README's table")
    bars.set_defaults(handler=_zoo_bars)

    ev = commands.add_parser("eval", help="mIoU and per-class IoU, or PQ (Cityscapes convention)")
    ev.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files or smp dirs")
    ev.add_argument(
        "--task",
        default="semantic",
        help="semantic (mIoU) or panoptic (PQ, SQ, RQ and mIoU of a panoptic checkpoint)",
    )
    ev.add_argument(
        "--domain", default="real", help=f"{', '.join(DOMAINS)} or cityscapes:PATH, ..."
    )
    ev.add_argument("--split", default="val", help="the dataset's split (val)")
    ev.add_argument("--ensemble", action="store_true", help="average the models' softmax outputs")
    ev.add_argument("--images", type=int, help="evaluate on the first N images")
    _add_size(ev, "resize images to H x W")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_choice(ev, "--submodel", SUBMODEL_NAMES, "mmseg/DAFormer sub-model (model)")
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    ev.set_defaults(handler=_eval)

    convert = commands.add_parser(
        "convert", help="rewrite a checkpoint as safetensors that carry its model spec"
    )
    convert.add_argument("checkpoint", metavar="CKPT", help="a checkpoint file or smp dir")
    convert.add_argument(
        "--spec",
        help="its model, for a file that does not say (a torch.save of a state dict): JSON, "
        '\'{"arch": "Unet", "encoder": "resnet50", "classes": 19}\' (and "kwargs"), or a '
        "checkpoint that carries the spec",
    )
    _add_choice(convert, "--submodel", SUBMODEL_NAMES, "mmseg/DAFormer sub-model (model)")
    _add_size(
        convert, "the image size it was trained at, recorded: what the lab and sweeps score at"
    )
    convert.add_argument("-o", "--output", required=True, type=Path, help="OUT.safetensors")
    convert.set_defaults(handler=_convert)

    fisher = commands.add_parser("fisher", help="diagonal Fisher estimate on labelled data")
    fisher.add_argument("checkpoint", metavar="CKPT", help="a checkpoint file or smp dir")
    fisher.add_argument("--domain", default="synthetic", help="a labelled (source) dataset")
    fisher.add_argument("--images", type=int, default=64, help="labelled images (64)")
    _add_size(fisher, "resize to H x W")
    fisher.add_argument("--device", default="auto", help="auto, cpu or cuda")
    fisher.add_argument("-o", "--output", required=True, type=Path, help="F.safetensors")
    fisher.set_defaults(handler=_fisher)

    disc = commands.add_parser(
        "discrepancy", help="per-layer distance between checkpoints (Fig. 2)"
    )
    disc.add_argument("checkpoints", nargs="*", metavar="CKPT", help="the first is the reference")
    disc.add_argument("--preset", choices=PRESETS, help="take the checkpoints from the zoo")
    disc.add_argument("--zoo", type=Path, help="zoo folder (data/zoo)")
    disc.add_argument("--run", default="advent", help="the run of the checkpoint preset (advent)")
    disc.add_argument(
        "--family",
        default="strategies",
        choices=list(FAMILIES),
        help="the models of the heterogeneous preset (strategies: from one source model)",
    )
    disc.add_argument("--tau", type=float, default=10.0, help="discrepant: relative L2 >= 1/tau")
    disc.add_argument(
        "--kinds",
        nargs="+",
        metavar="KIND",
        help="draw and count only these kinds of tensor, e.g. weight bias 'BN running_var' (all)",
    )
    disc.add_argument("--base", type=Path, help="shared base, for task-vector cosines")
    _add_output_arguments(disc)
    disc.set_defaults(handler=_discrepancy)

    sweep = commands.add_parser("sweep", help="mIoU over start layer x alpha (Fig. 5b, 5c)")
    sweep.add_argument(
        "checkpoints", nargs="+", metavar="CKPT", help="checkpoint files or smp dirs"
    )
    sweep.add_argument("--anchors", type=int, nargs="+", default=[0], help="anchor indices (0)")
    sweep.add_argument("--starts", type=float, nargs="+", help="start fractions (11 from 0 to 1)")
    sweep.add_argument("--alphas", type=float, nargs="+", help="alphas (11 from 0 to 1)")
    _add_scoring(sweep, ["real", "synthetic"], "the first checkpoint", "target first: ")
    _add_choice(
        sweep,
        "--method",
        SWEEP_METHOD_NAMES,
        "merge method, under the layer-wise schedule (%(default)s)",
        "layerwise",
    )
    _add_method_inputs(sweep)
    _add_align(sweep)
    _add_choice(sweep, "--bn", BN_RULE_NAMES, "BN statistics rule (%(default)s)", "linear")
    _add_choice(sweep, "--executor", EXECUTOR_NAMES, "where the cells run (%(default)s)", "serial")
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

    path = commands.add_parser(
        "interpolate", help="mIoU along the straight line between two checkpoints (the barrier)"
    )
    path.add_argument("checkpoints", nargs=2, metavar="CKPT", help="model a (t = 0) and b (t = 1)")
    path.add_argument(
        "--steps", type=int, default=11, help="points from a to b, both included (11)"
    )
    _add_scoring(path, ["real"], "model a")
    _add_choice(path, "--bn", BN_RULE_NAMES, "BN statistics rule (%(default)s)", "linear")
    path.add_argument(
        "--align",
        action="store_true",
        help="first permute b's Unet decoder channels to match a's (weight matching)",
    )
    path.add_argument(
        "--reestimate",
        metavar="DOMAIN",
        help="measure each point's BN statistics anew on DOMAIN's first --images train images "
        "(unlabelled; AdaBN), instead of merging the checkpoints'",
    )
    path.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_output_arguments(path)
    path.set_defaults(handler=_interpolate)

    found = commands.add_parser("findings", help="the papers' claims, measured on the zoo")
    found.add_argument("--zoo", type=Path, help="zoo folder (data/zoo)")
    found.add_argument("--only", type=int, nargs="+", metavar="N", help="claim numbers (all)")
    found.add_argument("--images", type=int, default=100, help="val images per domain (100)")
    found_format = found.add_mutually_exclusive_group()
    found_format.add_argument("--json", action="store_true", help="the findings as JSON")
    found_format.add_argument(
        "--markdown", action="store_true", help="the findings as a Markdown table"
    )
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


def _add_choice(
    p: argparse.ArgumentParser, flag: str, names: Names, what: str, default: str | None = None
) -> None:
    """An option that takes one of ``names``, listed in its help. argparse would list them in
    the usage line too, and so read them (importing torch) whenever the parser is built."""
    metavar = flag[2:].upper()
    p.add_argument(
        flag, default=default, choices=names, metavar=metavar, help=f"{what}: %(choices)s"
    )


def _add_scoring(
    p: argparse.ArgumentParser, domains: list[str], whose: str, lead: str = ""
) -> None:
    """Where a command scores: ``--domains`` (default ``domains``), ``--images``, ``--size``
    (default: the resolution ``whose`` checkpoint records)."""
    p.add_argument(
        "--domains",
        nargs="+",
        default=domains,
        help=f"{lead}synthetic domains or cityscapes:PATH, gta5:PATH, synthia:PATH "
        f"({' '.join(domains)})",
    )
    p.add_argument("--images", type=int, default=100, help="val images per domain (100)")
    _add_size(p, f"score at H x W ({_RECORDED_SIZE.format(whose)})")


def _add_size(
    p: argparse.ArgumentParser, help: str, default: tuple[int, int] | None = None
) -> None:
    """An image size option, ``--size H W``."""
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=default, help=help)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--html", type=Path, help="write the figures to an HTML page")
    p.add_argument("--png", type=Path, help="write the main figure as a PNG")


def _add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files or smp dirs")
    p.add_argument("--anchor", default="0", help="anchor: input path or 0-based index (0)")
    _add_choice(p, "--method", METHOD_NAMES, "merge method (%(default)s)", "layerwise")
    _add_choice(p, "--schedule", SCHEDULE_NAMES, "override the method's schedule")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--start", type=int, help="depth index s where the decay starts (1)")
    start.add_argument("--start-frac", type=float, help="s as a fraction of depth, 0..1")
    p.add_argument("--alpha", type=float, help="the anchor's share before the decay (1/M)")
    _add_choice(p, "--bn", BN_RULE_NAMES, "BN statistics rule (%(default)s)", "linear")
    p.add_argument("--weights", type=float, nargs="+", help="per-model weights")
    _add_choice(p, "--granularity", GRANULARITY_NAMES, "one weight per (%(default)s)", "tensor")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_method_inputs(p)
    _add_choice(p, "--submodel", SUBMODEL_NAMES, "mmseg/DAFormer sub-model (model)")
    _add_align(p)


def _add_align(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--align",
        action="store_true",
        help="first permute the other models' Unet decoder channels to match the anchor's "
        "(weight matching, Git Re-Basin)",
    )


def _add_method_inputs(p: argparse.ArgumentParser) -> None:
    """What Fisher, task arithmetic and TIES take besides the checkpoints."""
    p.add_argument("--base", type=Path, help="shared base checkpoint (task_arithmetic, ties)")
    p.add_argument("--fisher", type=Path, nargs="+", help="one Fisher file per checkpoint")
    p.add_argument("--density", type=float, help="TIES: fraction kept (0.2)")
    p.add_argument("--scale", type=float, help="task vector scale (1.0)")


def _method_knobs(args: argparse.Namespace) -> dict[str, float]:
    """``--density`` and ``--scale`` where given (the merge's defaults otherwise)."""
    knobs = {"density": args.density, "scale": args.scale}
    return {k: v for k, v in knobs.items() if v is not None}


def _refuse_unused(args: argparse.Namespace, uses: dict[str, tuple[bool, str]], merge: str) -> None:
    """Refuse an option the merge would ignore: a silent no-op (``--alpha`` on an isotropic
    merge) misleads more than an error. ``uses`` maps an option to (used, what uses it)."""
    from lwmm_lab.engine.methods import METHODS

    def methods(need: str) -> str:
        return "method " + " or ".join(n for n, m in METHODS.items() if need in m.needs)

    needs = METHODS[args.method].needs
    uses = {
        **uses,
        "--density": (args.method == "ties", "method ties"),
        "--scale": ("base" in needs, methods("base")),
        "--base": ("base" in needs, methods("base")),
        "--fisher": ("fisher" in needs, methods("fisher")),
    }
    for option, (used, user) in uses.items():
        if getattr(args, option[2:].replace("-", "_")) is not None and not used:
            raise LwmmError(f"{option} is not used by this {merge}: only {user} uses it")


def _plan(args: argparse.Namespace) -> tuple[Pool, MergePlan]:
    """The pool and plan of ``lwmm merge`` / ``inspect``; an option the plan would ignore is
    refused."""
    from lwmm_lab.engine.merge import MergeConfig, make_plan
    from lwmm_lab.engine.pool import Pool

    pool = Pool(
        args.checkpoints,
        device=args.device,
        base=args.base,
        fisher=args.fisher,
        submodel=args.submodel,
        align=args.anchor if args.align else None,
    )
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
        **_method_knobs(args),
    )
    plan = make_plan(pool, config)
    layerwise = (plan.schedule == "layerwise", "the layerwise schedule")
    uses = {
        "--start": layerwise,
        "--start-frac": layerwise,
        "--alpha": layerwise,
        "--weights": (plan.schedule == "weights", "the weights schedule (method weighted)"),
    }
    _refuse_unused(args, uses, f"merge (method {args.method}, {plan.schedule} schedule)")
    return pool, plan


def _merge(args: argparse.Namespace) -> int:
    from lwmm_lab.engine.checkpoints import checkpoint_path
    from lwmm_lab.engine.merge import save_merge

    checkpoint_path(args.output)
    _check_reestimate(args)
    pool, plan = _plan(args)
    c = plan.config
    if args.reestimate is None:
        path, bn = save_merge(pool, args.output, c), c.bn
    else:
        path, bn = _reestimated_merge(args, pool, plan)
    print(
        f"wrote {path}: {c.method} ({plan.schedule} schedule) of {pool.n_models} "
        f"model{'s' if pool.n_models > 1 else ''}, "
        f"anchor [{plan.anchor}] {pool.labels[plan.anchor]}, Np={plan.layout.n_depth}, bn {bn}"
    )
    for note in plan.notes():
        print(f"note: {note}")
    return 0


def _check_reestimate(args: argparse.Namespace) -> None:
    """``lwmm merge``'s AdaBN options, checked before any merging: an option that would
    change nothing (a BN rule, or an image count without ``--reestimate``) is refused."""
    from lwmm_lab.data.datasets import check_dataset_names
    from lwmm_lab.errors import check_count, check_image_size

    if args.reestimate is None:
        for option in ("--reestimate-images", "--size"):
            if getattr(args, option[2:].replace("-", "_")) is not None:
                raise LwmmError(f"{option} is only used with --reestimate")
        return
    if args.bn != "linear":
        raise LwmmError(
            f"--bn {args.bn} has no effect with --reestimate: the statistics are measured anew"
        )
    args.reestimate = check_dataset_names(args.reestimate)
    images = 100 if args.reestimate_images is None else args.reestimate_images
    args.reestimate_images = check_count("--reestimate-images", images)
    if args.size is not None:
        args.size = check_image_size(tuple(args.size))


def _reestimated_merge(args: argparse.Namespace, pool: Pool, plan: MergePlan) -> tuple[Path, str]:
    """Write the merge with its BN statistics measured on ``--reestimate``'s train images;
    the file's provenance says on what. Returns its path and the BN statistics' description."""
    from lwmm_lab.analysis.adabn import reestimate_bn, reestimation_record, train_images
    from lwmm_lab.engine.merge import write_merge
    from lwmm_lab.engine.model import merged_model

    size = args.size or pool.checkpoints[plan.anchor].resolution
    images = train_images(args.reestimate, args.reestimate_images, size)
    model = reestimate_bn(merged_model(pool, plan.config), images)
    record = reestimation_record(args.reestimate, args.reestimate_images, size)
    path = write_merge(plan, model.state_dict(), args.output, bn_reestimated=record)
    each = f"{args.reestimate_images} train images{' each' if len(args.reestimate) > 1 else ''}"
    return path, f"re-estimated on {', '.join(args.reestimate)} ({each})"


def _inspect(args: argparse.Namespace) -> int:
    _, plan = _plan(args)
    print(plan.to_json() if args.json else plan.format())
    return 0


def _gallery(args: argparse.Namespace) -> int:
    from lwmm_lab.data.domains import save_gallery

    path = save_gallery(args.output, scenes=args.scenes, seed=args.seed, size=tuple(args.size))
    print(f"wrote {path}")
    return 0


def _zoo_build(args: argparse.Namespace) -> int:
    from lwmm_lab.zoo.build import build_zoo
    from lwmm_lab.zoo.recipe import ZooConfig

    config = ZooConfig.quick_config() if args.quick else ZooConfig()
    config = replace(config, seed=check_seed(args.seed))
    build_zoo(args.out, config, device=args.device, workers=args.workers)
    return 0


def _zoo_list(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.zoo or find_zoo())
    if args.scenario is not None:
        paths = scenario_checkpoints(manifest, args.scenario)
        entries = [next(e for e in manifest["checkpoints"] if e["path"] == p) for p in paths]
    else:
        entries = select(manifest, fraction=1.0)
    if args.paths:
        print(" ".join(shlex.quote(e["path"]) for e in entries))
        return 0
    if args.markdown:
        print(quality_table(manifest, entries))
        return 0
    labels = [f"{e['run']}@{e['step']}" for e in entries]
    width = max(map(len, labels), default=0)
    for label, e in zip(labels, entries, strict=True):
        scenarios = ", ".join(e["scenarios"]) or "-"
        print(
            f"{label:<{width}}  {e['arch']:<13} {e['num_classes']:>2} classes  "
            f"real {e['miou']['real']:5.1f}  ({scenarios})  {e['path']}"
        )
    return 0


def _zoo_bars(args: argparse.Namespace) -> int:
    from lwmm_lab.analysis import regimes

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
    from lwmm_lab.analysis.evaluation import evaluate_checkpoints
    from lwmm_lab.analysis.panoptic import TASKS

    size = tuple(args.size) if args.size else None
    check_name(args.task, TASKS, "task")
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
    from lwmm_lab.analysis.panoptic import evaluate_panoptic_checkpoints

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


def _convert(args: argparse.Namespace) -> int:
    from lwmm_lab.engine.checkpoints import convert_checkpoint, load_checkpoint

    spec = None if args.spec is None else _spec(args.spec)
    path = convert_checkpoint(args.checkpoint, args.output, spec, args.submodel, args.size)
    ckpt = load_checkpoint(path)
    print(f"wrote {path}: {len(ckpt.tensors)} tensors of {ckpt.spec}")
    return 0


def _spec(text: str) -> ModelSpec:
    """``--spec``: a spec as JSON, or the spec a checkpoint carries."""
    from lwmm_lab.engine.checkpoints import peek_checkpoint
    from lwmm_lab.engine.spec import ModelSpec

    if text.lstrip().startswith("{"):
        return ModelSpec.from_json(text, "--spec")
    if not Path(text).exists():
        raise LwmmError(
            f'--spec {text}: neither JSON (\'{{"arch": ..., "encoder": ..., '
            '"classes": ...}\') nor a checkpoint that exists'
        )
    spec = peek_checkpoint(text).spec
    if spec is None:
        raise LwmmError(f"--spec {text}: this checkpoint carries no model spec to take")
    return spec


def _fisher(args: argparse.Namespace) -> int:
    from lwmm_lab.data.datasets import open_dataset
    from lwmm_lab.engine.checkpoints import checkpoint_path, load_checkpoint
    from lwmm_lab.engine.model import load_model
    from lwmm_lab.zoo.fisher import estimate_fisher, save_fisher

    checkpoint_path(args.output, "a Fisher estimate")
    refuse_overwrite(args.output, (args.checkpoint,))
    ckpt = load_checkpoint(args.checkpoint)
    model = load_model(ckpt, args.device)
    size = tuple(args.size) if args.size else ckpt.resolution
    dataset = open_dataset(args.domain, "train", size, size=args.images)
    fisher = estimate_fisher(model, dataset, args.images)
    path = save_fisher(args.output, fisher, ckpt, args.domain, min(args.images, len(dataset)))
    print(f"wrote {path}: diagonal Fisher of {len(fisher)} parameters on {args.domain}")
    return 0


def _discrepancy(args: argparse.Namespace) -> int:
    from lwmm_lab.analysis.discrepancy import (
        KINDS,
        Discrepancy,
        bn_divergence,
        check_kinds,
        discrepancy,
        suggest_start,
        task_vector_cosine,
    )
    from lwmm_lab.engine.pool import Pool
    from lwmm_lab.lab.figures import (
        bn_divergence_figure,
        counts_figure,
        discrepancy_figure,
        task_vector_figure,
    )

    _check_outputs(args)
    paths, base = [str(p) for p in args.checkpoints], args.base
    if args.preset:
        manifest = load_manifest(args.zoo or default_zoo_dir())
        reference, others = preset(manifest, args.preset, run=args.run, family=args.family)
        paths, base = [reference, *others], base or base_checkpoint(manifest)
    if len(paths) < 2:
        raise LwmmError("give at least two checkpoints (the first is the reference) or --preset")
    Discrepancy.threshold(args.tau)  # a bad tau or kind is refused before any work
    kinds = check_kinds(args.kinds or KINDS)
    pool = Pool(paths, device="cpu", base=base)
    d = discrepancy(pool)
    bn = bn_divergence(pool)
    figures = [
        discrepancy_figure(d, args.tau, kinds),
        counts_figure(d, args.tau, kinds),
        bn_divergence_figure(bn),
    ]
    payload = d.to_json(args.tau, kinds) | {"bn_divergence": bn}
    if base is not None:
        tv = task_vector_cosine(pool)
        suggestion = suggest_start(tv, d.n_depth)
        figures.append(task_vector_figure(tv, suggestion))
        payload |= {"task_vector_cosine": tv, "suggested_start": suggestion}
    _write_outputs(args, payload, figures)
    if not args.json:
        cut = d.threshold(args.tau)
        print(f"reference {d.reference}, tau {args.tau:g} (relative L2 >= {cut:.3g})")
        for model, c in d.counts(args.tau, kinds).items():
            by_kind = ", ".join(f"{k} {n}" for k, n in c["kind"].items() if n)
            regions = ", ".join(f"{k} {n}" for k, n in c["region"].items())
            print(
                f"  {model}: {c['total']} tensors above ({by_kind or 'none'}); by region: {regions}"
            )
        for note in d.notes():
            print(f"note: {note}")
        if "suggested_start" in payload:
            s = payload["suggested_start"]
            print(f"suggested start layer from task-vector agreement: s = {s}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from lwmm_lab.analysis.sweeps import grid, run_sweep
    from lwmm_lab.engine.checkpoints import peek_checkpoint
    from lwmm_lab.engine.pool import resolve_device
    from lwmm_lab.lab.figures import sweep_curves, sweep_heatmap

    _check_outputs(args)
    _refuse_unused(args, {}, f"sweep (method {args.method})")
    resolution = args.size or peek_checkpoint(args.checkpoints[0]).resolution
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
        base=args.base,
        fisher=args.fisher,
        align=args.align,
        **_method_knobs(args),
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


def _interpolate(args: argparse.Namespace) -> int:
    from lwmm_lab.analysis.interpolation import linear_path
    from lwmm_lab.lab.figures import linear_path_figure

    _check_outputs(args)
    a, b = args.checkpoints
    path = linear_path(
        a, b, args.steps, args.domains, args.images, args.size, args.bn, args.align, args.device,
        args.reestimate,
    )  # fmt: skip
    name = f"{path.labels[0]} to {path.labels[1]}{', aligned' if path.aligned else ''}"
    figures = [linear_path_figure({name: path}, d) for d in path.miou]
    payload = path.to_json()
    _write_outputs(args, payload, figures)
    if not args.json:
        bn = f"re-estimated on {args.reestimate}" if args.reestimate else path.bn
        print(f"{name}, {args.steps} points, BN {bn}:")
        for d, values in path.miou.items():
            low = payload["lowest"][d]
            print(
                f"  {d}: barrier {path.barrier(d):.2f} (lowest {low['miou']:.2f} at t = "
                f"{low['t']:.2f}; a {values[0]:.2f}, b {values[-1]:.2f})"
            )
    return 0


def _findings(args: argparse.Namespace) -> int:
    from lwmm_lab.analysis import findings

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
    from lwmm_lab.analysis import findings

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
    from lwmm_lab.lab.figures import figure_path, page_path

    if args.html:
        page_path(args.html)
    if args.png:
        figure_path(args.png)


def _write_outputs(args: argparse.Namespace, payload: object, figures: list) -> None:
    from lwmm_lab.lab.figures import save_figure, save_html

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
