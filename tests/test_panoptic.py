"""Panoptic segmentation: the model, its targets and inference, and PQ against torchmetrics."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality
from tqdm.auto import tqdm

from lwmm_lab import LwmmError, ModelSpec, Pool, load_checkpoint, load_model, merged_model
from lwmm_lab.analysis.adabn import bn_variance_ratio, reestimate_bn, train_images
from lwmm_lab.analysis.comparison import merge_split, semantic_into_panoptic
from lwmm_lab.analysis.evaluation import predict, val_set
from lwmm_lab.analysis.panoptic import (
    VOID,
    PanopticConfig,
    _group,
    evaluate_panoptic,
    ground_truth,
    panoptic_predict,
    panoptic_scores,
    panoptic_stats,
    panoptic_targets,
    stuff_of,
    things_of,
)
from lwmm_lab.analysis.qualitative import panoptic_examples
from lwmm_lab.cli import main
from lwmm_lab.data import labels as L
from lwmm_lab.data.datasets import SyntheticScenes
from lwmm_lab.fixtures import cityscapes_folder
from lwmm_lab.zoo import load_manifest, select
from lwmm_lab.zoo.manifest import scenario_checkpoints

CLASSES = L.CLASS_SETS["synthia-16"]


def _reference(pc, pi, tc, ti, classes):
    """torchmetrics' PQ, SQ, RQ (means and per class) on the same (category, instance) maps."""
    metric = PanopticQuality(
        things=set(things_of(classes)),
        stuffs=set(stuff_of(classes)),
        allow_unknown_preds_category=True,
        return_sq_and_rq=True,
        return_per_class=True,
    )
    preds = torch.stack([pc, pi], -1)
    target = torch.stack([tc, ti], -1)
    return metric(preds, target)


def _compare(pc, pi, tc, ti, classes) -> None:
    ours = panoptic_scores(panoptic_stats(pc, pi, tc, ti, classes))
    theirs = _reference(pc, pi, tc, ti, classes)  # (C, 3): pq, sq, rq; things, then stuff
    order = sorted(things_of(classes)) + sorted(stuff_of(classes))
    for k, c in enumerate(order):
        name = L.CLASSES[c]
        pq, sq, rq = (float(v) * 100 for v in theirs[k])
        if name in ours.per_class:
            mine = ours.per_class[name]
            assert mine["pq"] == pytest.approx(pq, abs=1e-4), name
            assert mine["sq"] == pytest.approx(sq, abs=1e-4), name
            assert mine["rq"] == pytest.approx(rq, abs=1e-4), name
        else:
            assert pq == sq == rq == 0.0, name


def _blocks(g: torch.Generator, n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth made of rectangles: stuff background, thing instances, some void."""
    category = torch.full((n, h, w), CLASSES[0], dtype=torch.long)
    instance = torch.zeros((n, h, w), dtype=torch.long)
    things, stuff = things_of(CLASSES), stuff_of(CLASSES)
    for b in range(n):
        for k in range(int(torch.randint(3, 9, (), generator=g))):
            y, x = (
                (int(v) for v in torch.randint(0, h - 4, (1,), generator=g)),
                int(torch.randint(0, w - 4, (), generator=g)),
            )
            (y,) = y
            dy, dx = (int(v) for v in torch.randint(3, 12, (2,), generator=g))
            region = (slice(b, b + 1), slice(y, y + dy), slice(x, x + dx))
            if k % 3 == 2:
                category[region] = stuff[int(torch.randint(len(stuff), (), generator=g))]
                instance[region] = 0
            else:
                category[region] = things[int(torch.randint(len(things), (), generator=g))]
                instance[region] = k + 1
        category[b, : h // 8, : w // 8] = VOID
    return category, instance


@pytest.mark.parametrize("seed", range(6))
def test_pq_equals_torchmetrics_on_perturbed_predictions(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tc, ti = _blocks(g, 3, 32, 48)
    pc, pi = tc.clone(), ti.clone()
    noise = torch.rand(tc.shape, generator=g)
    pc[noise < 0.15] = CLASSES[int(torch.randint(len(CLASSES), (), generator=g))]
    pi[noise < 0.05] += 7  # split some instances
    pc[noise > 0.97] = VOID
    pi[pc == VOID] = 0
    _compare(pc, pi, tc, ti, CLASSES)


def test_pq_equals_torchmetrics_on_random_maps() -> None:
    g = torch.Generator().manual_seed(0)
    small = (CLASSES[0], CLASSES[1], 11, 13, VOID)  # road, sidewalk, person, car, void
    pick = torch.tensor(small)
    tc = pick[torch.randint(len(small), (2, 12, 12), generator=g)]
    pc = pick[torch.randint(len(small), (2, 12, 12), generator=g)]
    ti = torch.randint(1, 3, (2, 12, 12), generator=g)
    pi = torch.randint(1, 3, (2, 12, 12), generator=g)
    tc, ti = ground_truth(tc, ti, CLASSES)
    _compare(pc, torch.where(pc == VOID, 0, pi), tc, ti, CLASSES)


def test_perfect_outputs_give_pq_100_and_inference_inverts_the_targets() -> None:
    """Semantic labels, centre heatmap and offsets taken from the ground truth itself: stuff is
    perfect, and things nearly so. The misses are instances so close that their Gaussians make
    one peak (within the NMS window): centre-based grouping's known limit."""
    data = SyntheticScenes("synthetic-16", "val", 4, (96, 192), 0, instances=True)
    labels = torch.stack([data[i][1] for i in range(4)])
    instances = torch.stack([data[i][2] for i in range(4)])
    heat, offsets, mask = panoptic_targets(labels, instances)
    assert bool(mask.any()), "the scenes have instances"
    assert heat.max() == pytest.approx(1.0, abs=0.05)
    config = PanopticConfig(min_area=0.0)
    preds = [
        _group(label, h[0], o, CLASSES, config)
        for label, h, o in zip(labels, heat, offsets, strict=True)
    ]
    pc = torch.stack([p[0] for p in preds])
    pi = torch.stack([p[1] for p in preds])
    tc, ti = ground_truth(labels, instances, CLASSES)
    scores = panoptic_scores(panoptic_stats(pc, pi, tc, ti, CLASSES))
    assert scores.things["rq"] > 80 and scores.things["sq"] > 95, scores.things
    assert scores.stuff["pq"] == pytest.approx(100.0)
    _compare(pc, pi, tc, ti, CLASSES)


def test_grouping_knobs_it_cannot_use_are_refused_by_name() -> None:
    """An even NMS kernel shifted the pooled heatmap by a pixel: a shape error deep inside."""
    for knobs, says in (
        ({"nms_kernel": 6}, "nms_kernel=6: give an odd size"),
        ({"nms_kernel": 0}, "nms_kernel=0: give at least 1"),
        ({"top_k": -1}, "top_k=-1: give 0 or more"),
        ({"threshold": float("nan")}, "threshold=nan is not a finite number"),
        ({"min_area": 2.0}, r"min_area=2.0: give a fraction of the image, in \[0, 1\]"),
    ):
        with pytest.raises(LwmmError, match=says):
            PanopticConfig(**knobs)
    assert PanopticConfig(nms_kernel=1, top_k=0).nms_kernel == 1


def test_panoptic_examples_are_of_samples_with_instance_ids() -> None:
    """Each example as it is alone, in the order asked; samples without instance ids (a
    semantic val set) are refused in one line (an IndexError before)."""
    kwargs = {"encoder_depth": 2, "decoder_channels": [8, 8]}
    model = ModelSpec("PanopticUnet", "tu-resnet10t", 19, kwargs).build()
    data = val_set("real", 2, (32, 64), instances=True)
    both = panoptic_examples(model, model, data, [1, 0])
    assert [e.index for e in both] == [1, 0] and both[0].instances is not None
    (alone,) = panoptic_examples(model, model, data, 1)
    assert all(
        np.array_equal(a, b) for a, b in zip(alone.instances, both[0].instances, strict=True)
    )
    with pytest.raises(LwmmError, match="a panoptic example needs samples with instance ids"):
        panoptic_examples(model, model, val_set("real", 2, (32, 64)), [0])


def test_the_panoptic_model_shares_the_semantic_unets_names() -> None:
    kwargs = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    pan = ModelSpec("PanopticUnet", "tu-resnet10t", 16, kwargs).build().state_dict()
    sem = ModelSpec("Unet", "tu-resnet10t", 16, kwargs).build().state_dict()
    shared = [k for k in sem if k in pan and pan[k].shape == sem[k].shape]
    assert shared == list(sem), "every tensor of the semantic Unet is in the panoptic model"
    extra = [k for k in pan if k not in sem]
    assert extra and all(k.startswith(("center_head.", "offset_head.")) for k in extra)


def test_the_zoo_trains_a_panoptic_model_and_merges_semantic_ones_into_it(
    quick_zoo: Path, tmp_path: Path, capsys
) -> None:
    manifest = load_manifest(quick_zoo)
    (entry,) = select(manifest, scenario="panoptic", fraction=1.0)
    assert entry["arch"] == "PanopticUnet" and entry["num_classes"] == 16
    assert set(entry["panoptic"]) == {"synthetic-16", "real"}
    anchor, *semantic = scenario_checkpoints(manifest, "panoptic")
    assert anchor == entry["path"] and len(semantic) == 2
    out = tmp_path / "merged.safetensors"
    assert main(["merge", anchor, *semantic, "-o", str(out)]) == 0
    merged, original = load_checkpoint(out).tensors, load_checkpoint(anchor).tensors
    heads = [k for k in original if k.startswith(("center_head.", "offset_head."))]
    assert heads and all(torch.equal(merged[k], original[k]) for k in heads), "the anchor's heads"
    assert not torch.equal(merged["encoder.model.conv_stem.weight"], original[
        "encoder.model.conv_stem.weight"])  # fmt: skip
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(out),
                "--task",
                "panoptic",
                "--images",
                "6",
                "--size",
                "64",
                "128",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert {"pq", "sq", "rq", "per_class", "things", "stuff", "miou"} <= set(report)
    data = SyntheticScenes("real", "val", 6, (64, 128), 0, instances=True)
    again = evaluate_panoptic(load_model(out, "cpu"), data)
    assert report["pq"] == pytest.approx(again.pq, abs=1e-3)


def test_pq_equals_torchmetrics_on_a_trained_models_predictions(quick_zoo: Path) -> None:
    (entry,) = select(load_manifest(quick_zoo), scenario="panoptic", fraction=1.0)
    model = load_model(entry["path"], "cpu")
    data = SyntheticScenes("synthetic-16", "val", 6, (64, 128), 0, instances=True)
    images, labels, instances = (
        torch.stack(t) for t in zip(*(data[i] for i in range(6)), strict=True)
    )
    pc, pi = panoptic_predict(model, images, PanopticConfig(threshold=0.0))
    tc, ti = ground_truth(labels, instances, CLASSES)
    assert bool((pi > 0).any()), "the model predicts instances"
    _compare(pc, pi, tc, ti, CLASSES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "depth"], "task 'depth' is not one of semantic, panoptic"),
        (["--task", "panoptic", "--domain", "gta5:/nowhere"], "gta5 labels have no instance ids"),
    ],
)
def test_panoptic_bad_input_is_one_line(quick_zoo: Path, args, message, capsys) -> None:
    (entry,) = select(load_manifest(quick_zoo), scenario="panoptic", fraction=1.0)
    assert main(["eval", entry["path"], *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_split_without_labelled_pixels_is_refused_not_scored(
    quick_zoo: Path, tmp_path: Path, capsys
) -> None:
    """Cityscapes' test split ships labels that are all void: no IoU or PQ is defined, and a
    NaN in ``--json`` would not be JSON. Both tasks refuse it in one line."""
    root = cityscapes_folder(tmp_path / "cs", images=2, size=(64, 128), split="test")
    for label in root.glob("gtFine/test/*/*_labelIds.png"):
        void = np.zeros((64, 128), np.uint8)
        cv2.imwrite(str(label), void)
        cv2.imwrite(str(label).replace("labelIds", "instanceIds"), void.astype(np.uint16))
    (entry,) = select(load_manifest(quick_zoo), scenario="panoptic", fraction=1.0)
    for task in ("semantic", "panoptic"):
        args = ["eval", entry["path"], "--task", task, "--domain", f"cityscapes:{root}"]
        assert main([*args, "--split", "test", "--json"]) == 1
        out, err = capsys.readouterr()
        assert not out and err.count("\n") == 1, (task, err)
        assert "(test): no pixel of the 2 images is labelled" in err, (task, err)
        assert "Cityscapes' test labels are all void: score on val" in err


def test_a_semantic_checkpoint_is_refused_for_the_panoptic_task(quick_zoo: Path, capsys) -> None:
    (entry,) = select(load_manifest(quick_zoo), run="synthia16-minent", fraction=1.0)
    assert main(["eval", entry["path"], "--task", "panoptic"]) == 1
    err = capsys.readouterr().err
    assert entry["path"] in err and "no instance heads" in err and err.count("\n") == 1


def test_semantic_into_panoptic_scores_every_merge_like_the_api(
    quick_zoo: Path, monkeypatch, tmp_path: Path, table_bars: list[tqdm]
) -> None:
    """Table 6's comparison: the anchor, then each method with each semantic model and with
    both; every row is what scoring that merge through the Python API gives."""
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    anchor, *semantic = scenario_checkpoints(load_manifest(quick_zoo), "panoptic")
    rows = semantic_into_panoptic(anchor, semantic, images=4, resolution=(64, 128))
    assert [r["method"] for r in rows] == ["anchor"] + ["isotropic", "fisher", "layerwise"] * 3
    assert [r["semantic"] for r in rows[3::3]] == [
        ["synthia16-minent"],
        ["indep-minent"],
        ["synthia16-minent", "indep-minent"],
    ]
    data = val_set("real", 4, (64, 128), instances=True)
    expected = evaluate_panoptic(merged_model(Pool([anchor, *semantic], device="cpu")), data)
    last = rows[-1]
    assert last["name"] == "layerwise + synthia16-minent + indep-minent"
    assert last["pq"] == pytest.approx(expected.pq, abs=1e-3)
    assert last["miou"] == pytest.approx(expected.extra["miou"], abs=1e-3)
    alone = evaluate_panoptic(load_model(anchor, "cpu"), data)
    assert rows[0]["pq"] == pytest.approx(alone.pq, abs=1e-3)
    (bar,) = table_bars
    assert bar.n == bar.total == len(rows), "the bar steps once per row"


def test_merge_split_scores_the_merged_encoder_under_the_anchors_decoder(
    quick_zoo: Path, monkeypatch, tmp_path: Path
) -> None:
    """The anchor, the merge, and the merge's encoder with the anchor's decoder and heads score
    what those models score, and the anchor and the merge with BN statistics (or the merge's
    variances alone) measured anew on unlabelled images what those give; the pixels the merge
    changes, the anchor's margin and the decoders' variance ratios are what their predictions,
    probabilities and inputs give."""
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    anchor, semantic, _ = scenario_checkpoints(load_manifest(quick_zoo), "panoptic")
    split = merge_split(anchor, [semantic], images=4, resolution=(64, 128), reestimate=3)
    data = val_set("real", 4, (64, 128), instances=True)
    pool = Pool([anchor, semantic], device="cpu")
    unlabelled = train_images("real", 3, (64, 128))
    for prefix, model in (("anchor_", load_model(anchor, "cpu")), ("", merged_model(pool))):
        ratio = bn_variance_ratio(model, data.tensors[0], "decoder")
        assert split[f"{prefix}variance_ratio"] == pytest.approx(ratio, abs=1e-4)
        scores = evaluate_panoptic(reestimate_bn(model, unlabelled), data)
        assert split[f"{prefix}reestimated_pq"] == pytest.approx(scores.pq, abs=1e-3)
        assert split[f"{prefix}reestimated_miou"] == pytest.approx(scores.extra["miou"], abs=1e-3)
    assert split["reestimated_pq"] != split["pq"], "statistics measured anew change the scores"
    variances = evaluate_panoptic(
        reestimate_bn(merged_model(pool), unlabelled, statistics="var"), data
    )
    assert split["variance_reestimated_pq"] == pytest.approx(variances.pq, abs=1e-3)
    assert split["variance_reestimated_miou"] == pytest.approx(variances.extra["miou"], abs=1e-3)
    merged, alone = merged_model(pool), load_model(anchor, "cpu")
    x = data.tensors[0]
    before, after, label = predict(alone, x), predict(merged, x), data.tensors[1]
    changed = (after != before).double().mean()
    assert split["changed"] == pytest.approx(float(changed), abs=1e-4) and 0 < changed < 1
    labelled = (label != L.IGNORE).sum()
    for turned, was, now in (("wrong", before, after), ("right", after, before)):
        share = ((was == label) & (now != label)).sum() / labelled
        assert split[f"turned_{turned}"] == pytest.approx(float(share), abs=1e-4)
    state = alone.state_dict()
    encoder = {k: v for k, v in merged.state_dict().items() if k.startswith("encoder.")}
    assert encoder and any(not torch.equal(v, state[k]) for k, v in encoder.items())
    for prefix, model in (("anchor_", alone), ("", merged), ("encoder_", alone)):
        if prefix == "encoder_":
            alone.load_state_dict(encoder, strict=False)
        scores = evaluate_panoptic(model, data)
        assert split[f"{prefix}pq"] == pytest.approx(scores.pq, abs=1e-3)
        assert split[f"{prefix}miou"] == pytest.approx(scores.extra["miou"], abs=1e-3)
    assert 0 < split["decoder_share"] < 0.5 and 0 < split["margin"] <= 1, "alpha 1/2, decaying"
    semantic_split = merge_split(semantic, [anchor], images=4, resolution=(64, 128), reestimate=0)
    assert "encoder_pq" not in semantic_split and "encoder_miou" in semantic_split
    assert not any(k.endswith("reestimated_miou") for k in semantic_split), "reestimate=0"
    unet, fpn, _ = scenario_checkpoints(load_manifest(quick_zoo), "other-decoders")
    assert merge_split(unet, [fpn], images=1, resolution=(64, 128))["decoder_share"] == 0, (
        "no decoder tensor shared"
    )


def test_semantic_into_panoptic_tells_two_steps_of_one_run_apart(
    quick_zoo: Path, monkeypatch, tmp_path: Path
) -> None:
    """Two checkpoints of one run share its folder name; their rows are named by
    ``run@step`` instead, so no two rows (or dict keys built from them) collide."""
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    anchor, *_ = scenario_checkpoints(load_manifest(quick_zoo), "panoptic")
    steps = sorted((quick_zoo / "runs" / "indep-advent").glob("step-*.safetensors"))[-2:]
    rows = semantic_into_panoptic(
        anchor, steps, methods=("isotropic",), images=2, resolution=(64, 128)
    )
    labels = [load_checkpoint(s).label for s in steps]
    assert [r["semantic"] for r in rows[1:]] == [labels[:1], labels[1:], labels]
    assert len({r["name"] for r in rows}) == len(rows)


def test_panoptic_maps_colour_each_instance_apart() -> None:
    """Two touching cars of one class get different shades and a white outline; stuff keeps
    its class colour; void is black."""
    car = L.CLASSES.index("car")
    category = torch.full((8, 8), L.CLASSES.index("road"), dtype=torch.long)
    category[2:6, 1:7] = car
    category[0, 0] = VOID
    instance = torch.zeros(8, 8, dtype=torch.long)
    instance[2:6, 1:4], instance[2:6, 4:7] = 1, 2
    rgb = L.colorize_panoptic(category.numpy(), instance.numpy())
    assert tuple(rgb[7, 7]) == tuple(L.COLORS[L.CLASSES.index("road")])
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    assert tuple(rgb[3, 2]) != tuple(rgb[3, 5]), "two instances, two shades"
    assert tuple(rgb[3, 3]) == (255, 255, 255), "the boundary between them is outlined"
