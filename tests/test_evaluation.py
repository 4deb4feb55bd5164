"""mIoU by the Cityscapes convention, checked against smp's metrics; subsets; ensembles."""

from __future__ import annotations

import time
import weakref

import pytest
import segmentation_models_pytorch as smp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Subset, TensorDataset

from lwmm_lab import Checkpoint, LwmmError, ModelSpec
from lwmm_lab.analysis import evaluation
from lwmm_lab.analysis.evaluation import (
    class_probabilities,
    confusion,
    evaluate,
    forward,
    model_classes,
    predict,
    scores_from_confusion,
    top_class,
    val_set,
)
from lwmm_lab.analysis.qualitative import examples
from lwmm_lab.analysis.scorer import BatchScorer
from lwmm_lab.data import labels as L
from lwmm_lab.zoo.fisher import estimate_fisher

from .conftest import TINY, perturbed_model

ALL = L.CLASS_SETS["cityscapes-19"]


def _random_maps(
    seed: int, n: int = 3, h: int = 8, w: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor([0, 1, 2, 10, 13])  # only some classes occur
    label = present[torch.randint(len(present), (n, h, w), generator=g)]
    label[:, 0, :] = L.IGNORE
    pred = present[torch.randint(len(present), (n, h, w), generator=g)]
    pred[0, 1, 0] = 5  # a class predicted but never labelled
    return pred, label


def test_iou_matches_smp_where_classes_occur_and_skips_absent_ones() -> None:
    pred, label = _random_maps(0)
    scores = scores_from_confusion(confusion(pred, label, ALL), ALL, "x", 3)
    tp, fp, fn, _ = smp.metrics.get_stats(
        pred, label, mode="multiclass", num_classes=19, ignore_index=L.IGNORE
    )
    tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)  # accumulated over the split
    reference = smp.metrics.iou_score(tp, fp, fn, torch.zeros_like(tp), reduction="none")
    valid = label != L.IGNORE
    occurring = set(label[valid].tolist()) | set(pred[valid].tolist())
    for c, name in enumerate(L.CLASSES):
        if c in occurring:
            assert abs(scores.per_class_iou[name] - 100 * float(reference[c])) < 1e-6
        else:
            assert scores.per_class_iou[name] is None, "absent classes have no IoU"
            assert float(reference[c]) == 1.0, "(smp's default scores them 1.0)"
    present = [v for v in scores.per_class_iou.values() if v is not None]
    assert abs(scores.miou - sum(present) / len(present)) < 1e-9
    assert scores.per_class_iou["pole"] == 0.0, "predicted but never labelled: IoU 0, counted"


def test_subset_models_are_scored_on_their_own_classes() -> None:
    spec16 = ModelSpec(
        "Unet", "tu-resnet10t", 16, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    )
    model = spec16.build()
    assert model_classes(model) == L.CLASS_SETS["synthia-16"]
    images = torch.rand(2, 3, 32, 64)
    label = torch.full((2, 32, 64), L.TERRAIN)
    label[:, :16] = L.ROAD
    scores = evaluate(model, TensorDataset(images, label))
    assert "terrain" not in scores.per_class_iou and len(scores.per_class_iou) == 16
    prediction = predict(model, images)
    assert set(prediction.unique().tolist()) <= set(L.CLASS_SETS["synthia-16"])


def test_ensemble_averages_softmax_over_the_union_of_classes() -> None:
    torch.manual_seed(0)
    a = ModelSpec(
        "Unet", "tu-resnet10t", 19, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    ).build()
    b = ModelSpec(
        "Unet", "tu-resnet10t", 16, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    ).build()
    images = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        probs = class_probabilities([a, b], images)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 64))
    assert torch.equal(predict([a, b], images), probs.argmax(1))
    label = torch.randint(0, 19, (2, 32, 64))
    scores = evaluate([a, b], TensorDataset(images, label))
    assert scores.models == 2 and len(scores.per_class_iou) == 19


def test_tensor_datasets_are_scored_in_place_like_any_dataset() -> None:
    """A TensorDataset is sliced where it lies; any other dataset goes through a DataLoader."""
    torch.manual_seed(0)
    model = ModelSpec(
        "Unet", "tu-resnet10t", 19, {"encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    ).build()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(10, 3, 32, 64, generator=g)
    labels = torch.randint(0, 19, (10, 32, 64), generator=g)
    data = TensorDataset(images, labels)
    sliced = evaluate(model, data, batch_size=3)
    loaded = evaluate(model, torch.utils.data.Subset(data, range(10)), batch_size=4)
    assert sliced.images == loaded.images == 10
    assert (sliced.miou, sliced.per_class_iou) == (loaded.miou, loaded.per_class_iou), "same counts"


def test_scoring_a_model_in_training_leaves_it_as_it_was() -> None:
    """In training mode BatchNorm normalises by the batch and updates its running statistics:
    ``predict`` changed 132 buffers of a zoo model (and 9% of its predictions), ``evaluate``
    and ``estimate_fisher`` left a model mid-training in eval mode. Every score is the eval
    mode's, and the model comes back as it went in, each module in its own mode."""
    spec = ModelSpec("Unet", "tu-resnet10t", 19, {"encoder_depth": 2, "decoder_channels": [8, 8]})
    model = perturbed_model(spec, 0)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 32, 64, generator=g)
    labels = torch.randint(0, 19, (4, 32, 64), generator=g)
    data = TensorDataset(images, labels)

    def scores() -> tuple:  # in this order: estimate_fisher put the model in eval mode
        pred = predict(model, images)
        return (
            pred,
            evaluate(model, data).miou,
            estimate_fisher(model, data, 2),
            BatchScorer(images, labels, (4,))(model),
        )

    expected = scores()
    model.train()
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()  # frozen
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pred, miou, fisher, (scored, counts) = scores()
    assert torch.equal(pred, expected[0]) and miou == expected[1]
    assert all(torch.allclose(fisher[k], expected[2][k]) for k in fisher)
    assert torch.equal(scored, expected[3][0]) and torch.equal(counts, expected[3][1])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "BN stats kept"
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_a_checkpoint_where_a_model_goes_is_refused_saying_how_to_load_one(tmp_path) -> None:
    """A path, a Checkpoint or a state dict given to evaluate, predict, estimate_fisher or
    examples failed on ``.parameters`` or ``.modules`` (an AttributeError, a TypeError)."""
    model = perturbed_model(TINY, 0)
    data = TensorDataset(torch.rand(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long))
    state = model.state_dict()
    for bad in ("m.safetensors", tmp_path, Checkpoint(state, spec=TINY), state, [model, "m"]):
        for call, args in (
            (evaluate, (bad, data)),
            (predict, (bad, data.tensors[0])),
            (estimate_fisher, (bad, data, 1)),
            (examples, (model, bad, data, [0])),
        ):
            with pytest.raises(LwmmError, match=r"^a \w+ is given where a model \(an nn\.Module"):
                call(*args)
    with pytest.raises(LwmmError, match=r"^no model given"):
        evaluate([], data)


def test_labels_that_are_not_train_ids_are_refused_by_value() -> None:
    """Cityscapes label ids taken for trainIds would be scored as other classes, and an
    ignore of -1 failed deep inside the confusion: both are refused, naming the value, in a
    TensorDataset and in any other dataset."""
    model = ModelSpec(
        "Unet", "tu-resnet10t", 19, {"encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    ).build()
    images = torch.rand(2, 3, 32, 64)
    for bad in (-1, 26, 300):
        labels = torch.full((2, 32, 64), L.IGNORE)
        labels[1, 5, 7] = bad
        for data in (TensorDataset(images, labels), Subset(TensorDataset(images, labels), [0, 1])):
            with pytest.raises(LwmmError, match=rf"label {bad} is neither a trainId \(0..18\)"):
                evaluate(model, data)
    labels[1, 5, 7] = L.BICYCLE
    assert evaluate(model, TensorDataset(images, labels)).per_class_iou["bicycle"] is not None


def test_batches_that_would_be_scored_as_garbage_are_refused_by_what_is_wrong() -> None:
    """uint8 or 0..255 images, images normalised already or channels last, labels of another
    size, a DataLoader, a tuple of tensors, an empty set: each scored garbage without a word
    or failed deep inside torch; each is refused in one line, in evaluation and in Fisher."""
    model = ModelSpec(
        "Unet", "tu-resnet10t", 19, {"encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    ).build()
    images, labels = torch.rand(2, 3, 32, 64), torch.full((2, 32, 64), L.ROAD)
    cases = {
        "images are uint8; give floats in": TensorDataset((images * 255).byte(), labels),
        r"image values span .*\.\.255; give floats in \[0, 1\]": TensorDataset(
            images * 255, labels
        ),
        r"image values span -2.*normalised": TensorDataset((images - 0.45) / 0.225, labels),
        r"images of shape \(\d, 32, 64, 3\); give \(N, 3, H, W\)": TensorDataset(
            images.permute(0, 2, 3, 1), labels
        ),
        r"labels of shape \(\d, 16, 64\) for images of shape": TensorDataset(
            images, labels[:, :16]
        ),
        "the dataset is empty": TensorDataset(images[:0], labels[:0]),
        r"a sample is a Tensor, not \(image, label\)": (images, labels),
        "not a DataLoader": torch.utils.data.DataLoader(TensorDataset(images, labels)),
    }
    for says, data in cases.items():
        with pytest.raises(LwmmError, match=says):
            evaluate(model, data)
        if isinstance(data, TensorDataset) and len(data):
            with pytest.raises(LwmmError, match=says):
                evaluate(model, Subset(data, [0, 1]))
            with pytest.raises(LwmmError, match=says):
                estimate_fisher(model, data, images=2)
    assert evaluate(model, TensorDataset(images, labels)).images == 2
    for knobs, says in (  # batch_size=-1 scored no image (NaN), "gpu" failed inside torch
        ({"batch_size": -1}, r"^batch_size=-1: give at least 1"),
        ({"batch_size": 0}, r"^batch_size=0: give at least 1"),
        ({"device": "gpu"}, r"^device 'gpu' is not one of auto, cpu, cuda"),
    ):
        with pytest.raises(LwmmError, match=says):
            evaluate(model, TensorDataset(images, labels), **knobs)


def test_a_val_set_takes_its_size_as_a_list_and_is_made_once() -> None:
    """A resolution given as a list was unhashable for the cache (a TypeError)."""
    listed = val_set("night", 2, [16, 32])
    assert listed is val_set("night", 2, (16, 32)), "one val set per settings, cached"
    assert listed.tensors[0].shape == (2, 3, 16, 32)
    with pytest.raises(LwmmError, match=r"^device 'gpu' is not one of"):
        val_set("night", 2, (16, 32), device="gpu")


def test_val_sets_are_kept_up_to_a_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is bounded by bytes, not by a count of sets (sixteen full-size Cityscapes
    sets were 67 GB): the least recently used set leaves first; the set asked for last, and a
    set still held elsewhere, are kept whatever their size."""
    one = val_set("night", 3, (16, 32), seed=11)
    size = sum(t.nbytes for t in one.tensors)
    monkeypatch.setattr(evaluation, "VAL_CACHE_BYTES", int(2.5 * size))
    two = weakref.ref(val_set("night", 3, (16, 32), seed=12))
    rendered = two().tensors[0].clone()
    assert val_set("night", 3, (16, 32), seed=11) is one and two() is not None, "two sets fit"
    three = weakref.ref(val_set("night", 3, (16, 32), seed=13))
    assert two() is None, "the least recently used set left for the third"
    assert torch.equal(val_set("night", 3, (16, 32), seed=12).tensors[0], rendered)
    monkeypatch.setattr(evaluation, "VAL_CACHE_BYTES", 0)
    four = val_set("night", 3, (16, 32), seed=14)
    assert three() is None and val_set("night", 3, (16, 32), seed=14) is four
    val_set("night", 3, (16, 32), seed=15)
    assert val_set("night", 3, (16, 32), seed=11) is one, "held here, so found again"


class _Sizes(torch.utils.data.Dataset):
    """Images of mixed sizes, none a multiple of 8: GTA5's are 1052 x 1914, and a few differ."""

    SIZES = ((20, 36), (20, 36), (28, 44), (20, 36))

    def __len__(self) -> int:
        return len(self.SIZES)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        h, w = self.SIZES[i]
        return torch.rand(3, h, w, generator=g), torch.randint(0, 19, (h, w), generator=g)


def test_models_are_scored_on_images_of_any_size_and_of_mixed_sizes() -> None:
    """An FPN needs sides divisible by its output stride: its inputs are padded and its logits
    cropped back; images of different sizes are batched by runs of one size."""
    torch.manual_seed(0)
    fpn = ModelSpec("FPN", "tu-resnet10t", 19, {"encoder_depth": 3}).build().eval()
    image, label = _Sizes()[2]
    with pytest.raises(RuntimeError, match="divisible by 8"):
        fpn(image[None])  # smp's own check: what the padding is for
    assert predict(fpn, image[None]).shape == (1, *label.shape)
    batched = evaluate(fpn, _Sizes(), batch_size=4)
    one_by_one = evaluate(fpn, _Sizes(), batch_size=1)
    assert batched.images == one_by_one.images == 4
    assert batched.per_class_iou == one_by_one.per_class_iou
    with torch.no_grad():
        ensemble = predict([fpn, fpn], image[None])
    assert torch.equal(ensemble, predict(fpn, image[None])), "the ensemble pads its members too"
    panoptic = ModelSpec("PanopticUnet", TINY.encoder, 19, TINY.kwargs).build()
    panoptic.requires_divisible_input_shape = True  # as an smp whose Unet needs it would say
    with torch.no_grad():
        outputs = forward(panoptic, image[None], panoptic.forward_panoptic)
    assert [tuple(o.shape) for o in outputs] == [(1, c, 28, 44) for c in (19, 1, 2)]


class _Slow(torch.utils.data.Dataset):
    """Samples that take a while to read, as a real dataset's full-size images do."""

    def __init__(self, data: TensorDataset, seconds: float) -> None:
        self.data, self.seconds = data, seconds

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        time.sleep(self.seconds)
        return self.data[i]


def test_a_long_evaluation_shows_its_progress_and_a_short_one_does_not(capsys) -> None:
    """``progress``: a bar counting the images once a pass has taken a second, none before.

    The short pass comes after a first one, which pays the one-off costs: it then takes about
    6 ms on the 2-core CPU. Run first, it took over a second once, beside another test run."""
    model = ModelSpec(
        "Unet", "tu-resnet10t", 19, {"encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    ).build()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.rand(12, 3, 32, 64, generator=g), torch.randint(0, 19, (12, 32, 64)))
    quick = evaluate(model, data, "real", batch_size=4)
    evaluate(model, torch.utils.data.Subset(data, range(4)), "real", batch_size=4, progress=True)
    assert capsys.readouterr().err == ""
    slow = evaluate(model, _Slow(data, 0.15), "real", batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "eval real:" in err and "/12" in err
    assert (slow.images, slow.miou) == (quick.images, quick.miou)
    evaluate(model, _Slow(data, 0.15), "real", batch_size=4)
    assert capsys.readouterr().err == "", "no bar unless asked for"


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    classes=st.sets(st.integers(0, 18), min_size=1).map(sorted),
    ignored=st.floats(0.0, 1.0),
)
def test_confusion_counts_each_scored_pixel_once(
    seed: int, classes: list[int], ignored: float
) -> None:
    """One bincount over every pixel, rows outside the model's classes dropped: the same
    counts as going pixel by pixel over the labelled pixels of those classes."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(19, (2, 5, 7), generator=g)
    label[torch.rand(label.shape, generator=g) < ignored] = L.IGNORE
    pred = torch.tensor(classes)[torch.randint(len(classes), label.shape, generator=g)]
    expected = torch.zeros(19, 19, dtype=torch.int64)
    for y, p in zip(label.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if y in classes:
            expected[y, p] += 1
    assert torch.equal(confusion(pred, label.to(torch.uint8), classes), expected)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), levels=st.integers(1, 4))
def test_top_class_is_argmax_ties_included(seed: int, levels: int) -> None:
    """Few distinct scores make ties common: the first maximum wins, as with argmax."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(levels, (3, 6, 4, 5), generator=g).float()
    for x in (scores, scores.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(top_class(x), x.argmax(1))


def test_a_batch_scorer_scores_each_part_as_on_its_own() -> None:
    """One forward pass over the joined parts gives each part the predictions and the
    confusion that scoring it alone gives."""
    torch.manual_seed(0)
    model = ModelSpec(
        "Unet", "tu-resnet10t", 16, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    ).build()
    images = torch.rand(5, 3, 32, 64)
    labels = torch.randint(19, (5, 32, 64))
    labels[:, :4] = L.IGNORE
    pred, counts = BatchScorer(images, labels, (2, 3))(model)
    assert counts.shape == (2, 19, 19)
    classes = model_classes(model)
    for k, part in enumerate((slice(0, 2), slice(2, 5))):
        alone = predict(model, images[part])
        assert torch.equal(pred[part], alone)
        assert torch.equal(counts[k], confusion(alone, labels[part], classes))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_batch_scorer_replays_a_graph_of_the_models_current_weights() -> None:
    """On a GPU a model scored again is replayed from a CUDA graph: every call equals the
    eager pass, after weights loaded in place (the graph reads them at replay, no new capture)
    and after the model's memory moved (a new capture); a model in training mode is scored
    eagerly."""
    torch.manual_seed(0)
    spec = ModelSpec(
        "Unet", "tu-resnet10t", 19, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    )
    model, other = spec.build("cuda"), spec.build("cuda")
    images = torch.rand(5, 3, 32, 64, device="cuda")
    labels = torch.randint(19, (5, 32, 64), device="cuda")
    graphed, eager = BatchScorer(images, labels, (2, 3)), BatchScorer(images, labels, (2, 3), False)

    def same() -> bool:
        return all(map(torch.equal, graphed(model), eager(model)))

    assert same() and graphed.captures == 0, "a model scored once is not captured"
    assert same() and same() and graphed.captures == 1
    before = eager(model)[1]
    model.load_state_dict(other.state_dict())
    assert not torch.equal(eager(model)[1], before), "the new weights score otherwise"
    assert same() and graphed.captures == 1, "weights loaded in place: the same graph"
    for p in model.parameters():
        p.data = p.data.clone()
    assert same() and same() and graphed.captures == 2, "moved memory: a new graph"
    model.train()
    assert torch.equal(graphed(model)[1], eager(model)[1]) and graphed.captures == 2
