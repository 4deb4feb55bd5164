"""The ``lwmm`` command line: merge and inspect checkpoints, draw the data gallery.

Bad input exits with status 1 and one line, ``lwmm: error: <what is wrong>``, never a
traceback; warnings print as ``lwmm: warning: ...``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from lwmm_lab._version import __version__
from lwmm_lab.checkpoints import SUBMODELS
from lwmm_lab.domains import save_gallery
from lwmm_lab.errors import LwmmError
from lwmm_lab.merge import MergeConfig, make_plan, save_merge
from lwmm_lab.methods import BN_RULES, METHODS, SCHEDULES
from lwmm_lab.pool import GRANULARITIES, Pool

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lwmm`` console script."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.run(args)
        except LwmmError as e:
            print(f"lwmm: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("lwmm: interrupted", file=sys.stderr)
            return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lwmm", description="Layer-wise model merging of segmentation checkpoints."
    )
    parser.add_argument("--version", action="version", version=f"lwmm {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    merge = commands.add_parser("merge", help="merge checkpoints into one safetensors file")
    _add_merge_arguments(merge)
    merge.add_argument("-o", "--output", required=True, type=Path, help="OUT.safetensors")
    merge.set_defaults(run=_merge)

    inspect = commands.add_parser("inspect", help="print the merge plan (a dry run)")
    _add_merge_arguments(inspect)
    inspect.add_argument("--json", action="store_true", help="the plan as a JSON list")
    inspect.set_defaults(run=_inspect)

    data = commands.add_parser("data", help="the synthetic street-scene domains")
    data_commands = data.add_subparsers(required=True, metavar="DATA_COMMAND")
    gallery = data_commands.add_parser("gallery", help="one row per domain, as a PNG")
    gallery.add_argument("-o", "--output", required=True, type=Path, help="FILE.png")
    gallery.add_argument("--scenes", type=int, default=3, help="scenes per row (3)")
    gallery.add_argument("--seed", type=int, default=0)
    gallery.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    gallery.set_defaults(run=_gallery)
    return parser


def _add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files or smp dirs")
    p.add_argument("--anchor", default="0", help="anchor: input path or 0-based index (0)")
    p.add_argument("--method", default="layerwise", choices=list(METHODS))
    p.add_argument("--schedule", choices=list(SCHEDULES), help="override the method's schedule")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--start", type=int, help="depth index s where the decay starts (1)")
    start.add_argument("--start-frac", type=float, help="s as a fraction of depth, 0..1")
    p.add_argument("--alpha", type=float, help="non-anchor share before the decay (1/M)")
    p.add_argument("--bn", default="linear", choices=list(BN_RULES), help="BN statistics rule")
    p.add_argument("--weights", type=float, nargs="+", help="per-model weights")
    p.add_argument("--granularity", default="tensor", choices=GRANULARITIES)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--base", type=Path, help="shared base checkpoint (task_arithmetic, ties)")
    p.add_argument("--fisher", type=Path, nargs="+", help="one Fisher file per checkpoint")
    p.add_argument("--density", type=float, default=0.2, help="TIES: fraction kept (0.2)")
    p.add_argument("--scale", type=float, default=1.0, help="task vector scale (1.0)")
    p.add_argument("--submodel", choices=SUBMODELS, help="mmseg/DAFormer sub-model (model)")


def _pool_and_config(args: argparse.Namespace) -> tuple[Pool, MergeConfig]:
    pool = Pool(
        args.checkpoints,
        device=args.device,
        base=args.base,
        fisher=args.fisher,
        submodel=args.submodel,
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
        density=args.density,
        scale=args.scale,
    )
    return pool, config


def _merge(args: argparse.Namespace) -> int:
    pool, config = _pool_and_config(args)
    plan = make_plan(pool, config)
    path = save_merge(pool, args.output, plan.config)
    c = plan.config
    print(
        f"wrote {path}: {c.method} ({plan.schedule} schedule) of {pool.n_models} models, "
        f"anchor [{plan.anchor}] {pool.labels[plan.anchor]}, Np={plan.layout.n_depth}, bn {c.bn}"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    pool, config = _pool_and_config(args)
    plan = make_plan(pool, config)
    print(plan.to_json() if args.json else plan.format())
    return 0


def _gallery(args: argparse.Namespace) -> int:
    if args.output.suffix.lower() != ".png":
        raise LwmmError(f"{args.output}: the gallery is written as a .png file")
    path = save_gallery(args.output, scenes=args.scenes, seed=args.seed, size=tuple(args.size))
    print(f"wrote {path}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lwmm: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
