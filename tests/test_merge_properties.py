"""Property-based tests of the merge engine on random state dicts (hypothesis + real torch)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lwmm_lab import BN_RULES, Checkpoint, Pool, layerwise_weights, make_plan, merge
from lwmm_lab.engine import fused as fused_module
from lwmm_lab.engine import merge as merge_module
from lwmm_lab.engine import routes as routes_module
from lwmm_lab.engine import target as target_module
from lwmm_lab.engine.methods import METHODS, BlockContext, trim_
from lwmm_lab.engine.pool import as_row, is_bn_stat

from .conftest import TRITON_ON_CPU, checkpoint_of

#: Scalars up to 4-D tensors (laid out channels last in the stack, like convolution weights).
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)


@st.composite
def state_dicts(draw: st.DrawFn, min_models: int = 1) -> list[Checkpoint]:
    """M random checkpoints sharing a body, with BN layers and optionally different heads."""
    n_models = draw(st.integers(min_models, 4))
    body = draw(st.lists(shapes, min_size=1, max_size=5))
    n_bn = draw(st.integers(0, 2))
    channels = draw(st.lists(st.integers(1, 4), min_size=n_bn, max_size=n_bn))
    head_classes = draw(st.lists(st.integers(2, 4), min_size=n_models, max_size=n_models))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    checkpoints = []
    for i in range(n_models):
        sd: dict[str, torch.Tensor] = {}
        for k, shape in enumerate(body):
            sd[f"body.{k}.weight"] = torch.randn(shape, generator=g)
        for k, c in enumerate(channels):
            sd[f"bn{k}.weight"] = torch.rand(c, generator=g) + 0.5
            sd[f"bn{k}.bias"] = torch.randn(c, generator=g)
            sd[f"bn{k}.running_mean"] = torch.randn(c, generator=g) * 3
            sd[f"bn{k}.running_var"] = torch.rand(c, generator=g) * 2 + 0.1
            sd[f"bn{k}.num_batches_tracked"] = torch.randint(0, 50, (), generator=g)
        sd["head.weight"] = torch.randn(head_classes[i], 3, generator=g)
        checkpoints.append(Checkpoint(sd))
    return checkpoints


methods = st.sampled_from(["isotropic", "layerwise", "weighted", "fisher"])
bn_rules = st.sampled_from(list(BN_RULES))


def _fishers(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """A Fisher per model that belongs to that model (a function of its weights), 0 on one."""
    return [
        Checkpoint({k: v.float().square() * (k != "body.0.weight") for k, v in c.tensors.items()})
        for c in checkpoints
    ]


def _pool(checkpoints: list[Checkpoint]) -> Pool:
    return Pool(checkpoints, device="cpu", fisher=_fishers(checkpoints))


@given(
    st.integers(1, 60),
    st.integers(1, 6),
    st.data(),
)
def test_schedule_rows_sum_to_one_and_favour_the_anchor(n_depth: int, n_models: int, data) -> None:
    anchor = data.draw(st.integers(0, n_models - 1))
    start = data.draw(st.integers(1, n_depth))
    alpha = data.draw(st.floats(0, 1))
    w = layerwise_weights(n_depth, n_models, anchor, start=start, alpha=alpha)
    assert w.shape == (n_depth, n_models)
    torch.testing.assert_close(w.sum(1), torch.ones(n_depth, dtype=torch.float64))
    assert bool((w >= -1e-12).all())
    if alpha >= 1 / n_models:
        others = torch.cat([w[:, :anchor], w[:, anchor + 1 :]], 1)
        assert bool((w[:, anchor : anchor + 1] >= others - 1e-12).all())


@given(st.integers(1, 80), st.integers(1, 6), st.data())
def test_defaults_are_the_papers_eq1(n_depth: int, n_models: int, data) -> None:
    anchor = data.draw(st.integers(0, n_models - 1))
    w = layerwise_weights(n_depth, n_models, anchor)
    j = torch.arange(1, n_depth + 1, dtype=torch.float64)
    eq1 = (n_depth - j) / (n_depth * n_models)
    for i in range(n_models):
        if i != anchor:
            torch.testing.assert_close(w[:, i], eq1)
    assert w[-1, anchor] == 1.0, "the last layer is the anchor's"


@given(state_dicts(), methods, bn_rules, st.data())
def test_identical_inputs_give_the_identical_output(checkpoints, method, bn, data) -> None:
    same = [checkpoints[0]] * len(checkpoints)
    pool = _pool(same)
    weights = tuple(data.draw(st.floats(0.1, 5)) for _ in same)
    out = merge(pool, method=method, bn=bn, weights=weights if method == "weighted" else None)
    for name, value in out.items():
        expected = checkpoints[0].tensors[name]
        if bn == "gaussian-counts" and name.endswith("num_batches_tracked"):
            expected = expected * len(same)  # the mixture's counter is the sum N
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


@given(state_dicts(min_models=2), methods, bn_rules, st.data())
def test_order_of_non_anchor_models_does_not_matter(checkpoints, method, bn, data) -> None:
    anchor = data.draw(st.integers(0, len(checkpoints) - 1))
    others = [c for i, c in enumerate(checkpoints) if i != anchor]
    shuffled = data.draw(st.permutations(others))
    alpha = data.draw(st.floats(0, 1))
    start = data.draw(st.integers(1, 3))
    a = merge(
        _pool([checkpoints[anchor], *others]),
        method=method,
        bn=bn,
        alpha=alpha,
        start_frac=start / 3,
        weights=(2.0,) + (1.0,) * len(others),
    )
    b = merge(_pool([checkpoints[anchor], *shuffled]), method=method, bn=bn, alpha=alpha,
              start_frac=start / 3, weights=(2.0,) + (1.0,) * len(others))  # fmt: skip
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@given(state_dicts(min_models=2), st.sampled_from(["linear", "gaussian", "anchor"]), st.data())
def test_alpha_one_copies_the_anchor(checkpoints, bn, data) -> None:
    anchor = data.draw(st.integers(0, len(checkpoints) - 1))
    start_frac = data.draw(st.floats(0, 1))
    pool = Pool(checkpoints, device="cpu")
    out = merge(pool, anchor=anchor, alpha=1.0, start_frac=start_frac, bn=bn)
    expected = checkpoints[anchor].tensors
    assert list(out) == list(expected)
    for name, value in out.items():
        assert torch.equal(value, expected[name]), name


@given(state_dicts(), bn_rules)
def test_integer_buffers_keep_dtype_and_value(checkpoints, bn) -> None:
    out = merge(Pool(checkpoints, device="cpu"), bn=bn)
    for name, value in out.items():
        if name.endswith("num_batches_tracked"):
            assert value.dtype == torch.int64
            values = [c.tensors[name] for c in checkpoints]
            expected = sum(values) if bn == "gaussian-counts" else values[0]
            assert torch.equal(value, expected)


@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_isotropic_equals_swa_averaged_model_with_buffers(n_models: int, seed: int) -> None:
    torch.manual_seed(seed)
    models = []
    for _ in range(n_models):
        m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2)
        models.append(m)
    swa = AveragedModel(models[0], use_buffers=True)
    for m in models:
        swa.update_parameters(m)
    ours = merge(Pool([checkpoint_of(m) for m in models], device="cpu"), method="isotropic")
    for name, value in swa.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-6)


@given(st.lists(st.floats(0.05, 1), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_gaussian_matches_pooled_samples(weights, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    n_models, channels, n_samples = len(weights), 3, 200_000
    means = [torch.randn(channels, generator=g) * 2 for _ in weights]
    variances = [torch.rand(channels, generator=g) * 2 + 0.2 for _ in weights]
    checkpoints = [
        Checkpoint({"bn.running_mean": mu, "bn.running_var": var, "conv.weight": torch.ones(1)})
        for mu, var in zip(means, variances, strict=True)
    ]
    out = merge(
        Pool(checkpoints, device="cpu"), method="weighted", weights=tuple(weights), bn="gaussian"
    )
    w = torch.tensor(weights) / sum(weights)
    counts = (w * n_samples).round().long().tolist()
    samples = torch.cat(
        [
            mu + var.sqrt() * torch.randn(n, channels, generator=g)
            for mu, var, n in zip(means, variances, counts, strict=True)
        ]
    ).double()
    sigma = samples.std(0)
    mean_tol = 6 * sigma / samples.shape[0] ** 0.5
    var_tol = 6 * sigma**2 * (3.0 / samples.shape[0]) ** 0.5 + 0.02 * sigma**2
    assert bool(((out["bn.running_mean"] - samples.mean(0)).abs() <= mean_tol).all())
    assert bool(((out["bn.running_var"] - samples.var(0, unbiased=False)).abs() <= var_tol).all())
    if n_models > 1 and not all(torch.equal(means[0], m) for m in means):
        linear = merge(Pool(checkpoints, device="cpu"), method="weighted", weights=tuple(weights))
        assert bool((out["bn.running_var"] >= linear["bn.running_var"] - 1e-6).all()), (
            "the mixture variance adds the spread of the means to the linear average"
        )


@given(state_dicts(min_models=2))
def test_plan_weights_sum_to_one_and_non_shared_come_from_the_anchor(checkpoints) -> None:
    plan = make_plan(Pool(checkpoints, device="cpu"), bn="gaussian")
    for row in plan.rows():
        if row["kind"] == "shared":
            assert abs(sum(row["weights"]) - 1) < 1e-6
            assert row["source"] == ("bn:gaussian" if is_bn_stat(row["name"]) else "layerwise")
        else:
            assert row["weights"] is None and row["j"] is None
    heads = {tuple(c.tensors["head.weight"].shape) for c in checkpoints}
    head_row = next(r for r in plan.rows() if r["name"] == "head.weight")
    assert head_row["kind"] == ("shared" if len(heads) == 1 else "anchor-only")
    out = plan.run()
    if len(heads) > 1:
        assert torch.equal(out["head.weight"], checkpoints[0].tensors["head.weight"])


@pytest.mark.parametrize("n_models", [2, 3])
def test_every_permutation_of_inputs_with_fixed_anchor_agrees(n_models: int) -> None:
    g = torch.Generator().manual_seed(0)
    checkpoints = [
        Checkpoint({"a": torch.randn(5, generator=g), "b": torch.randn(2, 2, generator=g)})
        for _ in range(n_models)
    ]
    results = [
        merge(Pool(list(order), device="cpu"), anchor=list(order).index(checkpoints[0]), alpha=0.3)
        for order in itertools.permutations(checkpoints)
    ]
    for r in results[1:]:
        for k in r:
            torch.testing.assert_close(r[k], results[0][k])


@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=6),
    st.integers(1, 4),
    st.floats(0.01, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_segmented_trim_equals_a_kthvalue_per_tensor(sizes, n_models, density, seed) -> None:
    """The GPU's sort of the whole block keeps exactly what the CPU's per-tensor selection
    keeps, ties at the threshold included (small integer values make many ties)."""
    g = torch.Generator().manual_seed(seed)
    tau = torch.randint(-4, 5, (n_models, sum(sizes)), generator=g).float()
    by_sort, by_select = tau.clone(), tau.clone()
    trim_(by_sort, tuple(sizes), density, segmented=True)
    trim_(by_select, tuple(sizes), density, segmented=False)
    assert torch.equal(by_sort, by_select)
    for part, n in zip(by_select.split(sizes, 1), sizes, strict=True):
        assert bool(((part != 0).sum(1) <= n).all())


@pytest.mark.parametrize(
    "fused",
    [
        False,
        pytest.param(
            True, marks=pytest.mark.skipif(not TRITON_ON_CPU, reason="no Triton interpreter")
        ),
    ],
)
@given(
    state_dicts(min_models=2),
    st.sampled_from(["layerwise", "weighted", "task_arithmetic"]),
    st.sampled_from(["layerwise", "weights"]),
    st.data(),
)
def test_the_whole_row_sum_equals_the_per_tensor_sum(
    fused, checkpoints, method, schedule, data
) -> None:
    """The weighted sum over whole rows (what a GPU runs, :data:`FLAT_SUM`), with the torch
    ops or the fused kernel (:mod:`lwmm_lab.engine.fused`, under Triton's interpreter), gives
    what the per-tensor multi-tensor path gives, for any weights (rows that do not sum to 1
    included), with the base moved towards for task arithmetic."""
    base = Checkpoint({k: v * 0.5 for k, v in checkpoints[0].tensors.items()})
    pool = Pool(checkpoints, device="cpu", base=base)
    n = pool.n_models
    weights = data.draw(st.lists(st.floats(0.05, 2), min_size=n, max_size=n))
    plan = make_plan(
        pool,
        method=method,
        schedule=schedule,
        weights=weights if schedule == "weights" else None,
        alpha=data.draw(st.floats(0, 1)),
        start_frac=data.draw(st.floats(0, 1)),
        scale=data.draw(st.floats(0, 2)),
    )
    per_tensor = plan.run()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(merge_module.FLAT_SUM, "cpu", True)
        patch.setitem(fused_module.FUSED, "cpu", fused)
        whole_rows = plan.run()
    for name, value in per_tensor.items():
        torch.testing.assert_close(whole_rows[name], value, rtol=1e-6, atol=1e-6)


@given(
    state_dicts(min_models=2),
    st.sampled_from(["fisher", "ties", "task_arithmetic"]),
    st.floats(0.05, 1.0),
    st.data(),
)
def test_a_block_merges_as_its_tensors_one_by_one(checkpoints, method, density, data) -> None:
    """However the stack is cut into blocks, a non-linear method gives each tensor what the
    method gives that tensor alone with its depth's weights (the definition, per tensor)."""
    base = Checkpoint({k: v * 0.5 for k, v in checkpoints[0].tensors.items()})
    pool = Pool(checkpoints, device="cpu", base=base, fisher=_fishers(checkpoints))
    plan = make_plan(
        pool,
        method=method,
        schedule="layerwise",
        density=density,
        alpha=data.draw(st.floats(0, 1)),
        start_frac=data.draw(st.floats(0, 1)),
        scale=data.draw(st.floats(0, 2)),
    )
    width = data.draw(st.integers(1, pool.flat.shape[1]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(routes_module, "BLOCK_COLUMNS", {"cpu": width})
        pool.derived.clear()
        out = plan.run()
    combine = METHODS[method].combine
    for row in plan.rows():
        if row["kind"] != "shared" or is_bn_stat(row["name"]):
            continue
        cols = pool.columns[row["name"]]
        w = torch.tensor(row["weights"], dtype=pool.flat.dtype)[:, None]
        ctx = BlockContext(
            sizes=(cols.stop - cols.start,),
            base=pool.base[cols],
            fisher=pool.fisher[:, cols],
            density=density,
            scale=plan.config.scale,
        )
        alone = torch.empty(cols.stop - cols.start, dtype=pool.flat.dtype)
        combine(pool.flat[:, cols], w.expand(-1, alone.numel()), alone, ctx)
        torch.testing.assert_close(as_row(out[row["name"]]), alone, rtol=1e-6, atol=1e-6)


def _module_holding(tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A module whose state dict is ``tensors`` (floats as parameters, except the BN
    statistics, which are buffers like integers), channels last like the lab's models."""
    root = nn.Module()
    for name, value in tensors.items():
        owner = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        if value.is_floating_point() and not is_bn_stat(name):
            owner.register_parameter(leaf, nn.Parameter(value.clone()))
        else:
            owner.register_buffer(leaf, value.clone())
    return root.to(memory_format=torch.channels_last)


@given(
    state_dicts(min_models=2),
    st.sampled_from(list(METHODS)),
    bn_rules,
    st.booleans(),
    st.data(),
)
def test_a_merge_into_a_laid_out_target_equals_a_merge_into_a_new_one(
    checkpoints, method, bn, whole_rows, data
) -> None:
    """:func:`lay_out` puts a model's tensors end to end in the pool's column order; a merge
    into it (whole rows, indexed BN copies, one copy per dtype) writes the same values as a
    merge into a new state dict, for every method and BN rule, on either sum path."""
    base = Checkpoint({k: v * 0.5 for k, v in checkpoints[0].tensors.items()})
    pool = Pool(checkpoints, device="cpu", base=base, fisher=_fishers(checkpoints))
    anchor = data.draw(st.integers(0, pool.n_models - 1))
    model = _module_holding(dict(pool.checkpoints[anchor].tensors))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target_module.lay_out(model, pool, anchor)
    state = model.state_dict()
    for name, value in before.items():
        assert torch.equal(state[name], value), "laying out keeps the values"
    assert target_module._joined([state[n] for n in pool.columns]) is not None
    plan = make_plan(
        pool,
        method=method,
        anchor=anchor,
        bn=bn,
        weights=data.draw(
            st.lists(st.floats(0.05, 2), min_size=pool.n_models, max_size=pool.n_models)
        ),
        schedule=data.draw(st.sampled_from([None, "layerwise", "weights", "uniform"])),
        alpha=data.draw(st.floats(0, 1)),
        start_frac=data.draw(st.floats(0, 1)),
        density=data.draw(st.floats(0.05, 1.0)),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(merge_module.FLAT_SUM, "cpu", whole_rows)
        expected = plan.run()
        plan.run(into=state)
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-6)
        assert state[name].data_ptr() == model.state_dict()[name].data_ptr(), "written in place"
