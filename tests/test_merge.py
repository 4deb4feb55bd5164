"""The merge engine on real smp models and hand-checked small cases, on CPU and CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from lwmm_lab import (
    Checkpoint,
    LwmmError,
    ModelSpec,
    Pool,
    load_checkpoint,
    load_model,
    make_plan,
    merge,
    merged_model,
    save_checkpoint,
    save_merge,
)
from lwmm_lab.engine import merge as merge_module
from lwmm_lab.engine.methods import METHODS, register_method, ties_count
from lwmm_lab.engine.model import load_weights, merge_target
from lwmm_lab.engine.panoptic import ARCHS
from lwmm_lab.engine.pool import is_bn_stat, resolve_device
from lwmm_lab.engine.target import lay_out
from lwmm_lab.files import sha256

from .conftest import TINY, checkpoint_of


def _vectors(
    *rows: list[float], base: list[float] | None = None
) -> tuple[list[Checkpoint], Checkpoint]:
    models = [Checkpoint({"w": torch.tensor(r)}) for r in rows]
    return models, Checkpoint({"w": torch.tensor(base or [0.0] * len(rows[0]))})


def test_ties_trims_elects_and_takes_the_disjoint_mean(device: str) -> None:
    models, base = _vectors([3.0, -1.0, 0.0, 2.0], [1.0, 2.0, -2.0, -4.0])
    pool = Pool(models, device=device, base=base)
    out = merge(pool, method="ties", density=1.0)["w"].cpu()
    # signs of the sum: + + - -; only the agreeing models are averaged at each element
    assert out.tolist() == [2.0, 2.0, -2.0, -4.0]
    models, base = _vectors(
        [3.0, -0.5, 0.1, 2.0], [1.0, 2.5, -2.0, -4.0], base=[1.0, 1.0, 1.0, 1.0]
    )
    out = merge(Pool(models, device=device, base=base), method="ties", density=0.5)["w"].cpu()
    # task vectors [2, -1.5, -0.9, 1] -> keep 2, -1.5; [0, 1.5, -3, -5] -> keep -3, -5
    torch.testing.assert_close(out, torch.tensor([3.0, -0.5, -2.0, -4.0]))


@pytest.mark.parametrize(
    ("density", "n", "kept"),
    [(0.07, 100, 7), (0.14, 50, 7), (0.28, 25, 7), (0.55, 100, 55), (0.2, 33, 7), (1e-6, 10, 1)],
)
def test_ties_keeps_ceil_of_the_exact_density_times_n(density: float, n: int, kept: int) -> None:
    """The count is ceil(density * n) of the decimal product, never a float round-up."""
    assert ties_count(density, n) == kept
    g = torch.Generator().manual_seed(n)
    models, base = _vectors((torch.randn(n, generator=g) + 3).tolist())
    out = merge(Pool(models, device="cpu", base=base), method="ties", density=density)["w"]
    assert int((out != 0).sum()) == kept


def test_task_arithmetic_scales_the_mean_task_vector(device: str) -> None:
    models, base = _vectors([2.0, 4.0], [0.0, 8.0], base=[1.0, 1.0])
    pool = Pool(models, device=device, base=base)
    torch.testing.assert_close(
        merge(pool, method="task_arithmetic")["w"].cpu(), torch.tensor([1.0, 6.0])
    )
    torch.testing.assert_close(
        merge(pool, method="task_arithmetic", scale=0.0)["w"].cpu(), torch.tensor([1.0, 1.0])
    )
    torch.testing.assert_close(
        merge(pool, method="task_arithmetic", scale=2.0)["w"].cpu(), torch.tensor([1.0, 11.0])
    )


def test_fisher_weights_elementwise_and_falls_back_where_all_zero(device: str) -> None:
    models, _ = _vectors([0.0, 0.0, 10.0], [4.0, 8.0, 20.0])
    fisher = [
        Checkpoint({"w": torch.tensor([1.0, 0.0, 0.0])}),
        Checkpoint({"w": torch.tensor([3.0, 5.0, 0.0])}),
    ]
    out = merge(Pool(models, device=device, fisher=fisher), method="fisher")["w"].cpu()
    torch.testing.assert_close(out, torch.tensor([3.0, 8.0, 15.0]))
    weighted = merge(
        Pool(models, device=device, fisher=fisher), method="fisher", weights=(3.0, 1.0)
    )
    torch.testing.assert_close(weighted["w"].cpu(), torch.tensor([2.0, 8.0, 12.5]))
    fisher[1] = Checkpoint({"w": torch.tensor([3.0, -5.0, 0.0])})  # weights that sum below 0
    with pytest.raises(LwmmError, match="Fisher 1: tensor 'w' has negative values"):
        Pool(models, device=device, fisher=fisher)


def test_layerwise_ties_follows_the_depth_schedule() -> None:
    g = torch.Generator().manual_seed(0)
    models = [
        Checkpoint({f"l{k}": torch.randn(50, generator=g) for k in range(4)}) for _ in range(2)
    ]
    base = Checkpoint({f"l{k}": torch.zeros(50) for k in range(4)})
    pool = Pool(models, device="cpu", base=base)
    plan = make_plan(pool, method="ties", schedule="layerwise", density=0.5)
    assert plan.schedule == "layerwise" and plan.rows()[-1]["weights"] == [1.0, 0.0]
    out = plan.run()

    def trimmed(name: str) -> torch.Tensor:
        tau = models[0].tensors[name]
        return tau * (tau.abs() >= tau.abs().kthvalue(26).values)

    assert torch.equal(out["l3"], trimmed("l3")), "the last layer is the anchor's trimmed vector"
    assert not torch.equal(out["l0"], trimmed("l0")), "the first layer mixes both models"


def test_bn_rules_on_two_domains() -> None:
    a = {
        "bn.running_mean": torch.tensor([0.0]),
        "bn.running_var": torch.tensor([1.0]),
        "bn.num_batches_tracked": torch.tensor(300),
    }
    b = {
        "bn.running_mean": torch.tensor([4.0]),
        "bn.running_var": torch.tensor([1.0]),
        "bn.num_batches_tracked": torch.tensor(100),
    }
    pool = Pool(
        [
            Checkpoint({**a, "c.weight": torch.ones(1)}),
            Checkpoint({**b, "c.weight": torch.ones(1)}),
        ],
        device="cpu",
    )
    linear = merge(pool, method="isotropic", bn="linear")
    gaussian = merge(pool, method="isotropic", bn="gaussian")
    counts = merge(pool, method="isotropic", bn="gaussian-counts")
    anchor = merge(pool, method="isotropic", bn="anchor", anchor=1)
    assert linear["bn.running_mean"].item() == 2.0 and linear["bn.running_var"].item() == 1.0
    assert gaussian["bn.running_var"].item() == 5.0, "1 + the spread of the means (2^2)"
    assert counts["bn.running_mean"].item() == 1.0  # 0.75 * 0 + 0.25 * 4
    assert counts["bn.running_var"].item() == pytest.approx(1 + 0.75 * 1 + 0.25 * 9)
    assert counts["bn.num_batches_tracked"].item() == 400
    assert counts["bn.num_batches_tracked"].dtype == torch.int64
    assert (
        anchor["bn.running_mean"].item() == 4.0 and anchor["bn.num_batches_tracked"].item() == 100
    )
    assert linear["bn.num_batches_tracked"].item() == 300, "the anchor's counter"


def test_gaussian_counts_with_zero_counts_is_uniform_not_nan() -> None:
    sds = [
        {
            "bn.running_mean": torch.tensor([m]),
            "bn.running_var": torch.ones(1),
            "bn.num_batches_tracked": torch.tensor(0),
        }
        for m in (0.0, 2.0)
    ]
    pool = Pool([Checkpoint(s) for s in sds], device="cpu")
    out = merge(pool, bn="gaussian-counts")
    assert out["bn.running_mean"].item() == 1.0 and out["bn.running_var"].item() == 2.0
    note = "1 of the 1 BN layers have no num_batches_tracked to weight by ({}), so "
    note += "gaussian-counts weights them uniformly: bn"
    assert note.format("they are all 0") in make_plan(pool, bn="gaussian-counts").notes()
    uncounted = {k: v for k, v in sds[1].items() if k != "bn.num_batches_tracked"}
    counted = Checkpoint(sds[0] | {"bn.num_batches_tracked": torch.tensor(5)})
    pool = Pool([counted, Checkpoint(uncounted)], device="cpu")
    assert note.format("[1] model#1 lacks them") in make_plan(pool, bn="gaussian-counts").notes()
    assert merge(pool, bn="gaussian-counts")["bn.running_mean"].item() == 1.0, "uniform"
    assert not make_plan(pool, bn="gaussian").notes(), "only a rule by counts needs them"


def test_module_granularity_gives_one_depth_per_module(make_models) -> None:
    pool = Pool([checkpoint_of(m) for m in make_models(2)], device="cpu")
    by_tensor, by_module = pool.layout(0, "tensor"), pool.layout(0, "module")
    assert by_module.n_depth < by_tensor.n_depth
    rows = make_plan(pool, granularity="module", bn="gaussian").rows()
    bn1 = [r for r in rows if r["name"].startswith("encoder.model.bn1.") and r["kind"] == "shared"]
    assert len({r["j"] for r in bn1}) == 1 and len({tuple(r["weights"]) for r in bn1}) == 1
    assert by_module.depth_names[0] == "encoder.model.conv1.0"


def test_two_groups_of_equal_weight_models_each_keep_their_own_mean(device: str) -> None:
    """Weights (1, 1, 3, 3) make two groups of models averaged first: each group's mean is
    its own, not the latest one asked for, on either sum path and into a laid-out target."""
    models, _ = _vectors([0.0, 4.0], [2.0, 8.0], [10.0, 0.0], [20.0, 4.0])
    pool = Pool(models, device=device)
    expected = torch.tensor([11.5, 3.0])  # (1 * (0 + 2) + 3 * (10 + 20)) / 8, ...
    target = lay_out({"w": torch.zeros(2)}, pool)
    for into in (None, target, target):
        out = merge(pool, into=into, schedule="weights", weights=(1.0, 1.0, 3.0, 3.0))
        torch.testing.assert_close(out["w"].cpu(), expected)
    torch.testing.assert_close(merge(pool, method="isotropic")["w"].cpu(), torch.tensor([8.0, 4.0]))


def test_start_frac_maps_onto_depth(make_models) -> None:
    pool = Pool([checkpoint_of(m) for m in make_models(2)], device="cpu")
    n_depth = pool.layout().n_depth
    assert make_plan(pool, start_frac=0.0).config.start == 1
    assert make_plan(pool, start_frac=1.0).config.start == n_depth
    late = make_plan(pool, start=n_depth, alpha=0.5).weights
    assert late[: n_depth - 1, 1].eq(0.5).all() and late[-1, 1] == 0.0


def test_merge_into_model_in_place_equals_a_fresh_merge(make_models, device: str) -> None:
    pool = Pool([checkpoint_of(m, TINY) for m in make_models(3)], device=device)
    model = merged_model(pool, alpha=0.2)
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    merged_model(pool, model=model, alpha=0.9, start=5, bn="gaussian")
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == pointers, "no reallocation"
    fresh = merge(pool, alpha=0.9, start=5, bn="gaussian")
    for name, value in model.state_dict().items():
        assert torch.equal(value, fresh[name]), name


def test_the_merge_target_is_laid_out_and_runs_and_saves_like_any_model(
    tmp_path: Path, make_models
) -> None:
    """The module a merge is written into holds its tensors end to end in the pool's column
    order (one buffer per dtype), yet it is an ordinary model: parameters stay parameters,
    convolution weights stay channels last, and its outputs and saved file are those of the
    same merge loaded into a freshly built model."""
    pool = Pool([checkpoint_of(m, TINY) for m in make_models(3)], device="cpu")
    model = merge_target(pool, 2)
    merged_model(pool, model=model, anchor=2, alpha=0.4, start=4, bn="gaussian-counts")
    state = model.state_dict()
    floats = [state[name] for name in pool.columns]
    assert len({t.untyped_storage().data_ptr() for t in floats}) == 1
    assert sum(t.numel() for t in floats) == pool.flat.shape[1]
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    expected = merge(pool, anchor=2, alpha=0.4, start=4, bn="gaussian-counts")
    fresh = TINY.build()
    fresh.load_state_dict(expected)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    path = save_checkpoint(tmp_path / "laid-out.safetensors", state, TINY)
    again = load_checkpoint(path).tensors
    assert all(torch.equal(again[name], value) for name, value in expected.items())


def test_a_kept_target_whose_memory_moved_is_written_where_it_now_is(make_models) -> None:
    """The lab keeps one state dict and merges into it on every change; the check of its
    layout is kept too. A tensor of it given other memory (``set_``, the same object) must be
    written there, not into the buffer it left."""
    pool = Pool([checkpoint_of(m, TINY) for m in make_models(3)], device="cpu")
    state = merge_target(pool, 0).state_dict()
    merge(pool, into=state, alpha=0.2)
    mean = next(n for n in pool.columns if n.endswith(".running_mean"))
    count = next(n for n in state if n.endswith(".num_batches_tracked"))
    for name in (mean, count):
        state[name].set_(torch.full_like(state[name], -1))
    merge(pool, into=state, alpha=0.6, start=3)
    expected = merge(pool, alpha=0.6, start=3)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


def test_a_one_group_merge_over_whole_rows_builds_no_depth_index(
    make_models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-column depth index (int32, one value per parameter) is built only where a
    weight is looked up by depth: an isotropic merge into a laid-out target copies one mean
    row and needs none; a layer-wise merge then builds it."""
    monkeypatch.setitem(merge_module.FLAT_SUM, "cpu", True)
    pool = Pool([checkpoint_of(m, TINY) for m in make_models(3)], device="cpu")
    state = merge_target(pool, 0).state_dict()
    merge(pool, into=state, method="isotropic")
    assert make_plan(pool).routes.kept("column rows") is None
    merge(pool, into=state, alpha=0.3, start=2)
    assert make_plan(pool).routes.kept("column rows") is not None


def test_a_merge_holds_no_reference_to_its_target(make_models) -> None:
    """What the merge remembers of a target (its layout, checked once) holds none of its
    memory, so a model merged into and then dropped is freed: the number of tensors that use
    its buffer is the same before and after merges."""
    pool = Pool([checkpoint_of(m, TINY) for m in make_models(2)], device="cpu")
    state = merge_target(pool, 0).state_dict()
    buffer = state[next(iter(pool.columns))].untyped_storage()

    def users() -> int:
        return torch._C._storage_Use_Count(buffer._cdata)

    before = users()
    merge(pool, into=state, alpha=0.3)
    merge(pool, into=state, alpha=0.7, start=2)
    assert users() == before


def test_an_unfilled_model_is_wholly_written_by_a_merge_and_by_a_load(make_models) -> None:
    """``build(init=False)`` does not fill the model's memory, so a merge into it or a load of
    a checkpoint must write every entry: poisoned first, it must come out equal to both."""
    pool = Pool([checkpoint_of(m, TINY) for m in make_models(3)], device="cpu")
    initialised = TINY.build()
    x = torch.randn(2, 3, 32, 32)
    for fill in ("merge", "load"):
        model = TINY.build(init=False)
        assert list(model.state_dict()) == list(initialised.state_dict()) and not model.training
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        for value in model.state_dict().values():
            value.fill_(float("nan") if value.is_floating_point() else -7)
        if fill == "merge":
            merged_model(pool, model=model, anchor=1, alpha=0.3, bn="gaussian")
            expected = merge(pool, anchor=1, alpha=0.3, bn="gaussian")
        else:
            expected = pool.checkpoints[2].tensors
            load_weights(model, expected, "m2")
            initialised.load_state_dict(dict(expected))
            with torch.no_grad():
                assert torch.equal(model(x), initialised(x))
        for name, value in model.state_dict().items():
            assert torch.equal(value, expected[name]), (fill, name)


class _WithIndex(smp.Unet):
    """A Unet with a buffer outside its state dict, as some timm attention blocks have."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.register_buffer("index", torch.arange(4), persistent=False)


def test_a_model_with_buffers_no_load_fills_is_initialised_even_when_asked_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(ARCHS, "WithIndex", _WithIndex)
    spec = ModelSpec("WithIndex", TINY.encoder, TINY.classes, TINY.kwargs)
    for _ in range(2):
        assert torch.equal(spec.build(init=False).index, torch.arange(4))


def test_different_heads_and_decoders_come_from_the_anchor(tmp_path: Path) -> None:
    spec16 = ModelSpec(TINY.arch, TINY.encoder, 3, TINY.kwargs)
    fpn = ModelSpec("FPN", "tu-resnet10t", 5, {"encoder_depth": 3})
    paths = []
    for i, spec in enumerate((TINY, spec16, fpn)):
        torch.manual_seed(i)
        paths.append(
            save_checkpoint(tmp_path / f"m{i}.safetensors", spec.build().state_dict(), spec)
        )
    pool = Pool(paths, device="cpu")
    for anchor, spec in enumerate((TINY, spec16, fpn)):
        plan = make_plan(pool, anchor=anchor)
        kinds = {r["name"].split(".")[0]: r["kind"] for r in plan.rows() if r["kind"] != "integer"}
        assert kinds == {
            "encoder": "shared",
            "decoder": "anchor-only",
            "segmentation_head": "anchor-only",
        }
        own = [r["name"] for r in plan.rows() if r["kind"] == "anchor-only"]
        (note,) = [n for n in plan.notes() if "not merged" in n]
        others = ", ".join(f"[{i}] m{i}" for i in range(3) if i != anchor)
        assert note.startswith(f"{len(own)} of the anchor's tensors are copied from it")
        assert f"as {others} lack them or have another shape: {own[0]}, " in note
        left_out = pool.left_out(anchor)  # the other architecture's decoder: Unet vs FPN
        assert list(left_out) == ([f"[{i}] m{i}" for i in (0, 1)] if spec is fpn else ["[2] m2"])
        assert all(n.startswith("decoder.") for names in left_out.values() for n in names)
        assert not {n for names in left_out.values() for n in names} & {
            e.name for e in plan.layout.entries
        }
        (note,) = [n for n in plan.notes() if "left out" in n]
        assert note.startswith(f"{len(next(iter(left_out.values())))} of {next(iter(left_out))}'s")
        model = merged_model(pool, anchor=anchor)
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape[1] == spec.classes
        anchor_head = load_checkpoint(paths[anchor]).tensors
        for name, value in model.state_dict().items():
            if not name.startswith("encoder."):
                assert torch.equal(value, anchor_head[name])
    alone = make_plan(Pool(paths[:1], device="cpu"))
    assert alone.notes() == ["one model: the merge is a copy of it"]
    assert all(torch.equal(v, load_checkpoint(paths[0]).tensors[k]) for k, v in alone.run().items())


def test_saved_merge_records_provenance_and_rebuilds_the_same_model(
    tmp_path: Path, make_models
) -> None:
    sizes = (None, {"resolution": [64, 128]})  # what the zoo records; a file of yours may not
    paths = [
        save_checkpoint(tmp_path / f"m{i}.safetensors", m.state_dict(), TINY, size)
        for i, (m, size) in enumerate(zip(make_models(2), sizes, strict=True))
    ]
    pool = Pool(paths, device="cpu")
    out = save_merge(
        pool, tmp_path / "merged.safetensors", anchor=1, alpha=0.7, start=3, bn="gaussian"
    )
    ckpt = load_checkpoint(out)
    p = ckpt.provenance
    assert ckpt.resolution == (64, 128), "scored where its anchor is: lwmm eval reads it"
    assert (
        "resolution"
        not in load_checkpoint(save_merge(pool, tmp_path / "a0.safetensors")).provenance
    )
    assert p["method"] == "layerwise" and p["anchor"]["index"] == 1 and p["bn"] == "gaussian"
    assert p["start"] == 3 and p["alpha"] == 0.7 and p["n_depth"] == pool.layout(1).n_depth
    assert [i["sha256"] for i in p["inputs"]] == [sha256(q) for q in paths]
    assert ckpt.spec == TINY and list(ckpt.tensors) == list(pool.checkpoints[1].tensors)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = merged_model(pool, anchor=1, alpha=0.7, start=3, bn="gaussian")(x)
        assert torch.equal(load_model(out, device="cpu")(x), expected)
    before = paths[0].read_bytes()
    with pytest.raises(LwmmError, match="output is one of the inputs"):
        save_merge(pool, paths[0])
    assert paths[0].read_bytes() == before
    folder = tmp_path / "smp"  # an smp save_pretrained input: its weights were overwritten
    load_model(paths[0], device="cpu").save_pretrained(folder)
    weights = (folder / "model.safetensors").read_bytes()
    pool = Pool([folder, paths[1]], device="cpu")
    with pytest.raises(LwmmError, match=r"model\.safetensors: output is a file of the input "):
        save_merge(pool, folder / "model.safetensors")
    assert (folder / "model.safetensors").read_bytes() == weights
    assert save_merge(pool, folder / "merged.safetensors").is_file(), "a new file beside it"


def test_a_merge_is_stacked_in_the_widest_float_and_written_in_the_anchors_dtypes(
    tmp_path: Path, make_models
) -> None:
    """float16 inputs are merged in float32 and saved as float16 (the anchor's), and a
    float64 model anywhere in the pool, not only first, makes the stack float64."""
    states = [m.state_dict() for m in make_models(2)]

    def cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> Checkpoint:
        return Checkpoint(
            {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, spec=TINY
        )

    halves = [cast(s, torch.float16) for s in states]
    half = Pool(halves, device="cpu")
    assert half.flat.dtype == torch.float32
    merged = load_checkpoint(save_merge(half, tmp_path / "half.safetensors", alpha=0.3)).tensors
    wide = {k: v.float() if v.is_floating_point() else v.clone() for k, v in merged.items()}
    in_float32 = merge(half, into=wide, alpha=0.3)
    for name, value in merged.items():
        assert value.dtype == halves[0].tensors[name].dtype, name
        assert torch.equal(value, in_float32[name].to(value.dtype)), name
    mixed = Pool([cast(states[0], torch.float32), cast(states[1], torch.float64)], device="cpu")
    assert mixed.flat.dtype == torch.float64
    out = merge(mixed, anchor=0)
    assert all(out[k].dtype == v.dtype for k, v in states[0].items())
    assert merge(mixed, anchor=1)["segmentation_head.0.weight"].dtype == torch.float64


def test_bad_settings_are_named() -> None:
    models, _base = _vectors([1.0, 2.0], [3.0, 4.0])
    pool = Pool(models, device="cpu")
    cases = {
        "alpha=1.5 is outside": {"alpha": 1.5},
        r"start=3 is outside 1..Np=1": {"start": 3},
        r"start=0 is outside": {"start": 0},
        "anchor '7' is not among the inputs": {"anchor": 7},
        "anchor 'other.pt' is not among the inputs": {"anchor": "other.pt"},
        r"anchor 'model-1' is not among the inputs \(did you mean 'model#1'\? give an index "
        r"0\.\.1, one of the input paths, or a label: model#0, model#1\)": {"anchor": "model-1"},
        "method 'mean' is not one of": {"method": "mean"},
        "BN rule 'batch' is not one of": {"bn": "batch"},
        "granularity 'layer' is not one of": {"granularity": "layer"},
        "needs a base": {"method": "ties"},
        "needs a fisher": {"method": "fisher"},
        "3 weights given for 2 models": {"method": "weighted", "weights": (1.0, 1.0, 1.0)},
        "needs one weight per model": {"method": "weighted"},
        "must be finite, >= 0 and not all 0": {"method": "weighted", "weights": (0.0, 0.0)},
        "give start or start_frac, not both": {"start": 1, "start_frac": 0.5},
        r"start=1\.5 is not a whole number": {"start": 1.5},
        "alpha='half' is not a number": {"alpha": "half"},
        "alpha='0.5' is not a number": {"alpha": "0.5"},
        "alpha=True is not a number": {"alpha": True},
        "scale=inf is not a finite number": {"method": "isotropic", "scale": float("inf")},
        "density=nan is not a finite number": {"density": float("nan")},
        r"'alpah' is not a merge setting \(did you mean 'alpha'\? settings: method,": {
            "alpah": 0.3
        },
        r"anchor=1\.5 is not a whole number": {"anchor": 1.5},
        r"anchor=True is not a whole number": {"anchor": True},
        "anchor 'None' is not among the inputs": {"anchor": None},
        r"start=0\.5 is not a whole number \(a depth index 1..Np; give start_frac": {"start": 0.5},
        "start_frac='half' is not a number": {"start_frac": "half"},
        r"weights='1,2': give a list of numbers": {
            "method": "weighted",
            "weights": "1,2",
        },
        "weights=5: give a list of numbers": {"method": "weighted", "weights": 5},
        "weights='two' is not a number": {"method": "weighted", "weights": (1.0, "two")},
    }
    for message, changes in cases.items():
        with pytest.raises(LwmmError, match=message):
            make_plan(pool, **changes)
    assert make_plan(pool, anchor=1.0).anchor == make_plan(pool, anchor=np.int64(1)).anchor == 1
    with pytest.raises(LwmmError, match="no tensor is shared by all 2 checkpoints"):
        Pool([Checkpoint({"a": torch.ones(2)}), Checkpoint({"a": torch.ones(3)})], device="cpu")
    with pytest.raises(LwmmError, match=r"base .* lacks shared tensor 'w'"):
        Pool(models, device="cpu", base=Checkpoint({"v": torch.ones(2)}))


def test_target_model_must_match_the_anchor(make_models) -> None:
    """Checked once per set of target tensors (a slider writes into the same ones), and
    again for any other: a state dict that ran before, then got a tensor of another shape,
    is refused too."""
    pool = Pool([checkpoint_of(m) for m in make_models(2)], device="cpu")
    good = TINY.build().state_dict()
    merge(pool, into=good)
    merge(pool, into=good)
    other = ModelSpec(TINY.arch, TINY.encoder, 2, TINY.kwargs).build()
    with pytest.raises(
        LwmmError, match="the target model has another shape for 'segmentation_head"
    ):
        merge(pool, into=other)
    good["segmentation_head.0.bias"] = torch.zeros(2)
    with pytest.raises(LwmmError, match=r"another shape for 'segmentation_head\.0\.bias'"):
        merge(pool, into=good)
    good["segmentation_head.0.bias"] = 0  # was a TypeError from data_ptr, naming no key
    with pytest.raises(LwmmError, match=r"'segmentation_head\.0\.bias' is a int, not a tensor"):
        merge(pool, into=good)
    for into in ([], "model"):
        with pytest.raises(LwmmError, match=r"into: a .* is not a model or a state dict"):
            merge(pool, into=into)
    with pytest.raises(LwmmError, match=r"config: a dict is not a MergeConfig \(give the"):
        merge(pool, {"alpha": 0.3})  # was an AttributeError ('dict' has no 'replace')
    with pytest.raises(LwmmError, match="anchor '5' is not among the inputs"):
        merge_target(pool, 5)  # was an IndexError


def test_pool_from_files_matches_pool_from_memory(tmp_path: Path, make_models) -> None:
    models = make_models(3)
    paths = [
        save_checkpoint(tmp_path / f"m{i}.safetensors", m.state_dict(), TINY)
        for i, m in enumerate(models)
    ]
    from_files = merge(Pool(paths, device="cpu"), alpha=0.4)
    from_memory = merge(Pool([checkpoint_of(m) for m in models], device="cpu"), alpha=0.4)
    assert all(torch.equal(from_files[k], from_memory[k]) for k in from_memory)
    assert Pool(paths, device="cpu").anchor_index(tmp_path / "m2.safetensors") == 2
    assert Pool(paths, device="cpu").anchor_index("m1") == 1
    live = [Checkpoint(m.state_dict(keep_vars=True), spec=TINY) for m in models]
    base = Checkpoint(models[0].state_dict(keep_vars=True))
    fisher = [Checkpoint({k: v.square() for k, v in c.tensors.items()}) for c in live]
    pool = Pool(live, device="cpu", base=base, fisher=fisher)
    assert not any(t.requires_grad for t in (pool.flat, pool.base, pool.fisher)), "no graph"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_merge_matches_cpu_merge(make_models) -> None:
    checkpoints = [checkpoint_of(m) for m in make_models(3)]
    cpu = merge(Pool(checkpoints, device="cpu"), alpha=0.5, start=4, bn="gaussian")
    cuda = merge(Pool(checkpoints, device="cuda"), alpha=0.5, start=4, bn="gaussian")
    for name, value in cpu.items():
        torch.testing.assert_close(cuda[name].cpu(), value, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_re_merge_into_the_lab_s_target_replays_a_graph_of_equal_results(
    make_models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU a re-merge into a laid-out target is replayed from a CUDA graph from the second
    run of its kind on: each run equals an eager merge into a new state dict, through alpha and
    start changes (one graph), a change of groups (equal weights, then the usual two), task
    arithmetic, another target and the torch ops instead of the fused kernel (new graphs, each
    a kind of its own); with LWMM_CUDA_GRAPHS=0 none is captured."""
    checkpoints = [checkpoint_of(m, TINY) for m in make_models(3)]
    pool = Pool(checkpoints, device="cuda", base=checkpoints[0])
    model, other = merge_target(pool, 0), merge_target(pool, 0)

    def runs() -> int:
        graphed = make_plan(pool).routes.kept("graphed runs")
        return 0 if graphed is None else graphed.captures

    def merged_as_expected(target: torch.nn.Module, **settings: object) -> bool:
        merge(pool, into=target, **settings)
        expected = merge(pool, **settings)
        return all(torch.equal(v, expected[k]) for k, v in target.state_dict().items())

    sliders = ((0.2, 2), (0.7, 4), (0.5, 3))
    assert all(merged_as_expected(model, alpha=a, start=s, bn="gaussian") for a, s in sliders)
    assert runs() == 1, "alpha and start change the weights, not the kernels: one graph"
    for settings in (
        {"method": "isotropic"},  # one group: all three models weigh the same
        {"alpha": 0.9, "start": 3},  # two groups again, another BN rule
        {"method": "task_arithmetic", "scale": 0.5},
    ):
        assert merged_as_expected(model, **settings) and merged_as_expected(model, **settings)
    assert runs() == 4
    assert merged_as_expected(other, alpha=0.3) and merged_as_expected(other, alpha=0.6)
    assert runs() == 5, "another target's memory: a new graph"
    monkeypatch.setenv("LWMM_TRITON", "0")
    assert merged_as_expected(other, alpha=0.3) and merged_as_expected(other, alpha=0.6)
    assert runs() == 6, "torch ops instead of the fused kernel: a new graph"
    monkeypatch.setenv("LWMM_CUDA_GRAPHS", "0")
    eager = Pool(checkpoints, device="cuda")
    target = merge_target(eager, 0)
    for alpha in (0.2, 0.4, 0.6):
        merge(eager, into=target, alpha=alpha)
    assert make_plan(eager).routes.kept("graphed runs") is None


def test_a_device_is_the_cpu_or_a_cuda_gpu_this_machine_has() -> None:
    """The merges and evaluations are written for the CPU and CUDA: another kind of device,
    or a GPU index beyond this machine's, is refused naming it (not deep inside torch)."""
    assert resolve_device("cpu") == torch.device("cpu")
    for other in ("mps", "meta", "tpu"):
        with pytest.raises(LwmmError, match=rf"device '{other}' is not one of auto, cpu, cuda"):
            resolve_device(other)
    for bad in (None, True, 1.5):  # None was torch's TypeError
        with pytest.raises(LwmmError, match=rf"^device={bad!r}: give auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
        beyond = f"cuda:{torch.cuda.device_count()}"
        with pytest.raises(LwmmError, match=rf"device '{beyond}': this machine has \d CUDA"):
            resolve_device(beyond)
    else:
        with pytest.raises(LwmmError, match="CUDA is not available here"):
            resolve_device("cuda:0")


def test_grouped_means_equal_the_plain_weighted_sum(make_models) -> None:
    checkpoints = [checkpoint_of(m) for m in make_models(4)]
    pool = Pool(checkpoints, device="cpu")
    for settings in ({"alpha": 0.3, "start": 20, "anchor": 2}, {"method": "isotropic"}):
        plan = make_plan(pool, **settings)
        out = plan.run()
        for e in plan.layout.entries:
            if e.kind == "shared" and not e.name.endswith(("running_mean", "running_var")):
                w = plan.weights[e.j - 1].float()
                expected = sum(w[i] * checkpoints[i].tensors[e.name] for i in range(4))
                torch.testing.assert_close(out[e.name], expected, rtol=1e-5, atol=1e-6)
    assert pool._means[0][0] == (0, 1, 2, 3), "isotropic averages every model once and keeps it"


def test_a_method_of_ones_own_is_a_short_function_and_a_name_is_taken_once(make_models) -> None:
    """The registry is the one place a method is added: an elementwise median, registered,
    merges a pool like the built-in methods. A name taken already (it replaced the built-in
    without a word) and a need the engine lacks (misspelt, the method failed in its merge)
    are refused where they are registered."""

    def median(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, ctx: object) -> None:
        """Elementwise median of the models' values."""
        out.copy_(x.median(0).values)

    try:
        register_method("median", schedule="uniform")(median)
        checkpoints = [checkpoint_of(m) for m in make_models(3)]
        merged = merge(Pool(checkpoints, device="cpu"), method="median")
        for name, value in merged.items():
            if value.is_floating_point() and not is_bn_stat(name):  # BN stats: the BN rule
                stack = torch.stack([c.tensors[name] for c in checkpoints])
                torch.testing.assert_close(value, stack.median(0).values.to(value.dtype))
        assert METHODS["median"].summary == "Elementwise median of the models' values."
    finally:
        METHODS.pop("median", None)
    with pytest.raises(LwmmError, match=r"^method 'ties' is registered already"):
        register_method("ties")
    with pytest.raises(LwmmError, match=r"^method 'm': need 'fishr' is not one of base, fisher"):
        register_method("m", needs=("fishr",))
