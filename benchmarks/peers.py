"""lwmm's average, task arithmetic, TIES and Fisher against FusionBench and mergekit, same inputs.

Three fine-tuned copies of a small smp Unet (seeded perturbations of one base), in float32 and
in float64, are merged by lwmm and by the peers' own functions, tensor by tensor; every result
must agree to 1e-6.
Where the tools' conventions differ, the comparison maps one onto the other and says so:

- task arithmetic: lwmm scales the *mean* task vector (``scale``), FusionBench the *sum*
  (``scaling_factor``): lwmm ``scale = M * lambda`` is FusionBench's ``lambda``; mergekit's
  ``lambda`` with weights summing to 1 is lwmm's ``scale``;
- TIES keeps ``ceil(density * n)`` values per tensor in lwmm, ``floor(density * n)`` in
  mergekit, ``floor(density * n) + 1`` in FusionBench (see ``ties_count``): each peer is
  compared on the tensors where its count equals lwmm's (mergekit at density 0.5 on the even
  sizes, FusionBench at 0.3 where 0.3 n is not whole), and the others are counted, not hidden;
- Fisher: FusionBench without its per-model norm normalisation and with lwmm's floor 1e-12.

The peers pull in transformers, lightning and more, so they live in their own environment:
``make peers`` builds ``.venv-peers`` on top of ``.venv`` and runs this script there. The
last line is machine-readable: ``peers agree=<n>/<m> max_abs_diff=<x>``.
"""

from __future__ import annotations

import contextlib
import io
import sys

import torch

from lwmm_lab import Checkpoint, ModelSpec, Pool, merge

SPEC = ModelSpec("Unet", "tu-resnet10t", 5, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]})
TOLERANCE = 1e-6
N_MODELS = 3
DENSITY = 0.5
DENSITY_FUSIONBENCH = 0.3
WEIGHTS = (0.5, 0.3, 0.2)
SCALE = 0.8


def inputs(dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A base model and three fine-tuned copies; only the floating-point parameters."""
    torch.manual_seed(0)
    model = SPEC.build()
    base = {k: v.detach().to(dtype) for k, v in model.named_parameters()}
    tuned = [{k: v + 0.01 * torch.randn_like(v) for k, v in base.items()} for _ in range(N_MODELS)]
    return base, tuned


def ours(
    models: list[dict[str, torch.Tensor]],
    base: dict[str, torch.Tensor] | None = None,
    fisher: list[dict[str, torch.Tensor]] | None = None,
    **config: object,
) -> dict[str, torch.Tensor]:
    pool = Pool(
        [Checkpoint(m) for m in models],
        device="cpu",
        base=None if base is None else Checkpoint(base),
        fisher=None if fisher is None else [Checkpoint(f) for f in fisher],
    )
    return merge(pool, **config)


def comparisons(dtype: torch.dtype) -> list[tuple[str, str, float, int, int]]:
    """Every comparison: (peer, what, max |difference|, tensors compared, tensors skipped)."""
    from fusion_bench.method.fisher_merging.fisher_merging import merging_with_fisher_weights
    from fusion_bench.method.simple_average import simple_average
    from fusion_bench.method.task_arithmetic.task_arithmetic import TaskArithmeticAlgorithm
    from fusion_bench.method.ties_merging.ties_merging_utils import ties_merging
    from mergekit.merge_methods.api import merge_tensors

    base, tuned = inputs(dtype)
    kind = str(dtype).removeprefix("torch.")
    names = list(base)
    w = torch.tensor(WEIGHTS, dtype=dtype)
    w = w / w.sum()
    rows = []

    def compare(peer: str, what: str, mine: dict, theirs: dict, only: list[str]) -> None:
        diff = max((float((mine[k] - theirs[k]).abs().max()) for k in only), default=0.0)
        rows.append((peer, f"{what}, {kind}", diff, len(only), len(names) - len(only)))

    def mergekit(method: str, keys: list[str], weight: list[float], **parameters: object) -> dict:
        """mergekit's in-memory API, tensor by tensor; the base is input 0 where one is used."""
        if method == "linear":
            return {
                k: merge_tensors([m[k] for m in tuned], method, parameters={"weight": weight})
                for k in keys
            }
        per_model = {"weight": dict(enumerate(weight, start=1))}
        if "density" in parameters:
            per_model["density"] = dict.fromkeys(range(1, N_MODELS + 1), parameters.pop("density"))
        return {
            k: merge_tensors(
                [base[k], *(m[k] for m in tuned)],
                method,
                base_index=0,
                parameters={**per_model, **parameters},
            )
            for k in keys
        }

    # averages
    average = ours(tuned, method="isotropic")
    compare("FusionBench", "simple_average", average, simple_average(tuned), names)
    equal = [1.0] * N_MODELS
    compare("mergekit", "linear, equal weights", average, mergekit("linear", names, equal), names)
    weighted = ours(tuned, method="weighted", weights=WEIGHTS)
    compare(
        "mergekit",
        "linear, weights",
        weighted,
        mergekit("linear", names, list(WEIGHTS)),
        names,
    )

    # task arithmetic (FusionBench's algorithm class; its task_arithmetic_merge function fails
    # on two or more models in 0.2.33, mixing Parameters and Tensors)
    modules = {}
    for name, sd in (("_pretrained_", base), *((f"m{i}", m) for i, m in enumerate(tuned))):
        modules[name] = SPEC.build().to(dtype)
        modules[name].load_state_dict(sd, strict=False)
    lam = SCALE / N_MODELS
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = TaskArithmeticAlgorithm(scaling_factor=lam).run(modules)
    mine = ours(tuned, base=base, method="task_arithmetic", scale=SCALE)
    compare(
        "FusionBench",
        f"task_arithmetic, lambda {lam:.4g} = scale / M",
        mine,
        {k: v.detach() for k, v in theirs.named_parameters()},
        names,
    )
    mine = ours(tuned, base=base, method="task_arithmetic", weights=WEIGHTS, scale=SCALE)
    compare(
        "mergekit",
        "task_arithmetic, weights, lambda = scale",
        mine,
        mergekit("task_arithmetic", names, w.tolist(), **{"lambda": SCALE}),
        names,
    )

    # TIES
    def integral(k: str, density: float) -> bool:
        return abs(density * base[k].numel() - round(density * base[k].numel())) < 1e-9

    mine = ours(tuned, base=base, method="ties", density=DENSITY)
    even = [k for k in names if integral(k, DENSITY)]
    compare(
        "mergekit",
        f"ties, density {DENSITY}, equal weights",
        mine,
        mergekit("ties", even, equal, density=DENSITY),
        even,
    )
    mine = ours(tuned, base=base, method="ties", density=DENSITY_FUSIONBENCH)
    odd = [k for k in names if not integral(k, DENSITY_FUSIONBENCH)]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        fb = {
            k: base[k]
            + ties_merging(
                torch.stack([(m[k] - base[k]).reshape(-1) for m in tuned]),
                reset_thresh=DENSITY_FUSIONBENCH,
                merge_func="mean",
            ).reshape(base[k].shape)
            for k in odd
        }
    compare("FusionBench", f"ties, density {DENSITY_FUSIONBENCH}, per tensor", mine, fb, odd)
    mine = ours(tuned, base=base, method="ties", density=DENSITY, weights=WEIGHTS)
    compare(
        "mergekit",
        f"ties, density {DENSITY}, weights",
        mine,
        mergekit("ties", even, list(WEIGHTS), density=DENSITY),
        even,
    )

    # Fisher
    g = torch.Generator().manual_seed(1)
    fisher = [
        {k: torch.rand(v.shape, generator=g, dtype=v.dtype) for k, v in base.items()}
        for _ in range(N_MODELS)
    ]
    mine = ours(tuned, fisher=fisher, method="fisher", weights=WEIGHTS)
    theirs = merging_with_fisher_weights(
        {k: [m[k] for m in tuned] for k in names},
        fisher,
        w,
        normalize_fisher_weight=False,
        minimal_fisher_weight=1e-12,
    )
    compare("FusionBench", "fisher, weights, floor 1e-12", mine, theirs, names)
    return rows


def main() -> int:
    try:
        rows = comparisons(torch.float32) + comparisons(torch.float64)
    except ImportError as e:
        print(f"peers.py needs FusionBench and mergekit ({e.name} is missing): run `make peers`")
        return 2
    print(f"{'peer':<12} {'what':<52} {'max |diff|':>11} {'tensors':>8} {'skipped':>8}")
    for peer, what, diff, n, skipped in rows:
        print(f"{peer:<12} {what:<52} {diff:>11.2e} {n:>8} {skipped:>8}")
    agree = sum(diff <= TOLERANCE for _, _, diff, _, _ in rows)
    worst = max(diff for _, _, diff, _, _ in rows)
    print(f"peers agree={agree}/{len(rows)} max_abs_diff={worst:.2e}")
    return 0 if agree == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
