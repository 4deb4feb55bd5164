"""Weight matching: permuting decoder channels keeps the function, and alignment undoes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lwmm_lab import Checkpoint, LwmmError, ModelSpec, Pool, load_checkpoint, make_plan, merge
from lwmm_lab.cli import main
from lwmm_lab.engine.align import permute, unet_channel_groups
from lwmm_lab.engine.checkpoints import save_checkpoint

from .conftest import TINY, checkpoint_of, perturbed_model

X = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))


def _trained_like(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """A model whose BN affine parameters are not at their init (every channel distinct)."""
    model = perturbed_model(spec, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dim() == 1 and name.endswith(".weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() == 1 and name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=g))
    return model


def _shuffled(tensors: dict, seed: int) -> tuple[dict, dict]:
    groups = unet_channel_groups(tensors)
    g = torch.Generator().manual_seed(seed)
    perms = {group.name: torch.randperm(group.size, generator=g) for group in groups}
    return permute(tensors, groups, perms), perms


@given(seed=st.integers(0, 2**31 - 1))
def test_permuted_channels_compute_the_same_and_alignment_recovers_them(seed: int) -> None:
    model = _trained_like(TINY, 7)
    tensors = model.state_dict()
    shuffled, perms = _shuffled(tensors, seed)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    twin = TINY.build()
    twin.load_state_dict(shuffled)
    with torch.no_grad():
        torch.testing.assert_close(twin(X), model(X), rtol=1e-4, atol=1e-5)
    pool = Pool(
        [Checkpoint(dict(tensors), spec=TINY), Checkpoint(shuffled, spec=TINY)],
        device="cpu",
        align=0,
    )
    aligned = pool.checkpoints[1].tensors
    assert all(torch.equal(aligned[k], tensors[k]) for k in tensors), "exactly the original"
    assert pool.alignment.moved[1] == sum(
        int((p != torch.arange(len(p))).sum()) for p in perms.values()
    )


def test_aligned_average_of_a_permuted_twin_is_the_model(tmp_path: Path) -> None:
    model = _trained_like(TINY, 3)
    tensors = model.state_dict()
    shuffled, _ = _shuffled(tensors, 1)
    sources = [Checkpoint(dict(tensors), spec=TINY), Checkpoint(shuffled, spec=TINY)]
    plain = merge(Pool(sources, device="cpu"), method="isotropic")
    aligned = merge(Pool(sources, device="cpu", align=0), method="isotropic")
    with pytest.raises(LwmmError, match=r"^align=True: give the model to align to \(its index"):
        Pool(sources, device="cpu", align=True)  # was "anchor=True is not a whole number"
    weight = "decoder.blocks.0.conv1.0.weight"
    assert not torch.allclose(plain[weight], tensors[weight]), "unaligned: channels mix"
    for name, value in tensors.items():
        torch.testing.assert_close(aligned[name], value, rtol=0, atol=1e-6)


def test_alignment_follows_the_head_of_another_class_count() -> None:
    sixteen = ModelSpec("Unet", TINY.encoder, 16, TINY.kwargs)
    anchor = _trained_like(TINY, 1).state_dict()
    other = _trained_like(sixteen, 2)
    shuffled, _ = _shuffled(other.state_dict(), 5)
    pool = Pool([Checkpoint(dict(anchor), spec=TINY), Checkpoint(shuffled, spec=sixteen)], align=0)
    twin = sixteen.build()
    twin.load_state_dict(dict(pool.checkpoints[1].tensors))
    with torch.no_grad():
        torch.testing.assert_close(twin(X), other(X), rtol=1e-4, atol=1e-5)


def test_a_panoptic_models_instance_heads_follow_its_decoder_channels() -> None:
    """The centre and offset heads read the decoder's output like the segmentation head: a
    shuffled PanopticUnet computes all three outputs the same, and aligned beside a panoptic
    or a semantic anchor it gets its own tensors back; a panoptic anchor aligns semantic
    models, which lack those heads."""
    panoptic = ModelSpec("PanopticUnet", TINY.encoder, TINY.classes, TINY.kwargs)
    model = _trained_like(panoptic, 6).eval()
    tensors = model.state_dict()
    shuffled, _ = _shuffled(tensors, 2)
    twin = panoptic.build().eval()

    def computes_like_the_model(state: dict[str, torch.Tensor]) -> None:
        twin.load_state_dict(state)
        with torch.no_grad():
            outputs = zip(twin.forward_panoptic(X), model.forward_panoptic(X), strict=True)
            for mine, theirs in outputs:
                torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)

    computes_like_the_model(shuffled)
    semantic = Checkpoint(dict(_trained_like(TINY, 8).state_dict()), spec=TINY)
    for anchor in (Checkpoint(dict(tensors), spec=panoptic), semantic):
        pool = Pool([anchor, Checkpoint(shuffled, spec=panoptic)], device="cpu", align=0)
        aligned = pool.checkpoints[1].tensors
        if anchor is not semantic:
            assert all(torch.equal(aligned[k], tensors[k]) for k in tensors), "the original"
        computes_like_the_model(dict(aligned))
    pool = Pool([Checkpoint(dict(tensors), spec=panoptic), semantic], device="cpu", align=0)
    assert pool.alignment.moved[1] > 0


def test_alignment_is_recorded_and_the_anchor_must_match(tmp_path: Path, capsys) -> None:
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"m{seed}.safetensors"
        save_checkpoint(path, _trained_like(TINY, seed).state_dict(), TINY)
        paths.append(str(path))
    pool = Pool(paths, device="cpu", align=paths[1])
    assert pool.alignment.anchor == 1 and "aligned to m2" in repr(pool)
    with pytest.raises(LwmmError, match="not the model the pool was aligned to"):
        make_plan(pool, anchor=0)
    plan = make_plan(pool, anchor=1)
    assert any("weight matching" in note for note in plan.notes())
    out = tmp_path / "merged.safetensors"
    assert main(["merge", *paths, "--anchor", "1", "--align", "-o", str(out)]) == 0
    record = load_checkpoint(out).provenance["alignment"]
    assert record["method"] == "weight-matching" and record["anchor"] == "m2"
    assert record["models"]["m1"]["moved_channels"] > 0 and record["models"]["m2"] == {
        "rounds": 0,
        "moved_channels": 0,
    }
    assert main(["inspect", *paths, "--align", "--json"]) == 0
    capsys.readouterr()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # smp's shallow FPN
def test_align_refuses_other_architectures_in_one_line(tmp_path: Path, capsys) -> None:
    unet = tmp_path / "unet.safetensors"
    save_checkpoint(unet, checkpoint_of(perturbed_model(TINY, 1)).tensors, TINY)
    fpn_spec = ModelSpec("FPN", TINY.encoder, 5, {"encoder_depth": 3})
    fpn = tmp_path / "fpn.safetensors"
    save_checkpoint(fpn, checkpoint_of(perturbed_model(fpn_spec, 2)).tensors, fpn_spec)
    out = tmp_path / "never.safetensors"
    for anchor, layer in (
        ("0", "decoder.blocks.0.conv1.0.weight"),
        ("1", "fpn: decoder alignment needs"),
    ):
        assert (
            main(["merge", str(unet), str(fpn), "--anchor", anchor, "--align", "-o", str(out)]) == 1
        )
        err = capsys.readouterr().err
        assert err.startswith("lwmm: error: ") and err.count("\n") == 1 and layer in err
        assert not out.exists()
    scse = ModelSpec("Unet", TINY.encoder, 5, TINY.kwargs | {"decoder_attention_type": "scse"})
    attention = perturbed_model(scse, 3).state_dict()
    with pytest.raises(LwmmError, match=r"cannot align layer 'decoder\.blocks\.0\.attention1"):
        unet_channel_groups(attention, "scse")


def test_fisher_estimates_follow_their_models_permutation() -> None:
    model = _trained_like(TINY, 4)
    tensors = model.state_dict()
    shuffled, perms = _shuffled(tensors, 9)
    g = torch.Generator().manual_seed(0)
    fisher = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    groups = unet_channel_groups(tensors)
    sources = [Checkpoint(dict(tensors), spec=TINY), Checkpoint(shuffled, spec=TINY)]
    fishers = [Checkpoint(fisher), Checkpoint(permute(fisher, groups, perms))]
    pool = Pool(sources, device="cpu", fisher=fishers, align=0)
    torch.testing.assert_close(pool.fisher[1], pool.fisher[0], rtol=0, atol=0)


def test_align_refuses_a_wider_decoder_naming_the_layer() -> None:
    wide = ModelSpec("Unet", TINY.encoder, 5, TINY.kwargs | {"decoder_channels": [32, 8, 4]})
    sources = [
        checkpoint_of(perturbed_model(TINY, 1), TINY),
        checkpoint_of(perturbed_model(wide, 2), wide),
    ]
    with pytest.raises(
        LwmmError, match=r"another shape \[32, .*'decoder\.blocks\.0\.conv1\.0\.weight'"
    ):
        Pool(sources, device="cpu", align=0)
