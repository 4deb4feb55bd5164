"""BN statistics re-estimated on unlabelled images: what they are, against torch's own
``update_bn``, and a model left as it was found when a pass fails."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.optim.swa_utils import update_bn

from lwmm_lab import ModelSpec, Pool, load_checkpoint, merged_model
from lwmm_lab.analysis.adabn import (
    bn_variance_ratio,
    bn_variance_ratios,
    even_batches,
    reestimate_bn,
    train_images,
)
from lwmm_lab.analysis.discrepancy import region_of
from lwmm_lab.analysis.evaluation import normalize
from lwmm_lab.cli import main
from lwmm_lab.errors import LwmmError
from lwmm_lab.lab.figures import variance_ratio_figure
from lwmm_lab.zoo import load_manifest
from lwmm_lab.zoo.manifest import scenario_checkpoints

from .conftest import TINY, perturbed_model

#: A small panoptic model: its instance heads' BN layers are outside forward()'s pass.
PANOPTIC = ModelSpec(
    "PanopticUnet", "tu-resnet10t", 19, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
)


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("spec", [TINY, PANOPTIC], ids=["semantic", "panoptic"])
def test_reestimated_bn_statistics_are_those_of_the_images_alone(spec: ModelSpec) -> None:
    """Each BN layer's running statistics become the mean over the batches of its inputs'
    batch mean and unbiased variance: the checkpoint's own are reset, not blended in. Every
    layer sees the images, a panoptic model's instance heads too."""
    model = perturbed_model(spec, 0, counts=7)  # statistics of 7 batches, not these images
    weights = {k: v.clone() for k, v in model.named_parameters()}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in norms}
    for name, m in norms.items():
        m.register_forward_hook(lambda m, args, out, name=name: seen[name].append(args[0]))
    reestimate_bn(model, _images(), 2)
    assert not model.training and all(m.momentum == 0.1 for m in norms.values())
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    for name, m in norms.items():
        inputs = seen[name]
        assert len(inputs) == 2 and m.num_batches_tracked == 2
        mean = torch.stack([x.mean((0, 2, 3)) for x in inputs]).mean(0)
        var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in inputs]).mean(0)
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.running_var, var, rtol=1e-4, atol=1e-5)


def test_reestimated_bn_statistics_equal_torch_update_bn() -> None:
    """The peer: swa_utils' update_bn over the same normalised batches gives every buffer."""
    ours, theirs = perturbed_model(TINY, 0, counts=7), perturbed_model(TINY, 0, counts=7)
    images = _images(7)
    reestimate_bn(ours, images, batch_size=4)
    update_bn([normalize(b) for b in images.split([4, 3])], theirs)
    peer = theirs.state_dict()
    for name, mine in ours.state_dict().items():
        torch.testing.assert_close(mine, peer[name], rtol=1e-5, atol=1e-6, msg=name)


@given(st.integers(1, 500), st.integers(1, 100))
def test_batches_are_even_and_never_of_one_image_among_more(count: int, batch_size: int) -> None:
    """The images in order, in batches whose sizes differ by at most one, none of a single
    image unless it is the only one; from a batch size of 3 on, the fewest batches of at
    most that many."""
    images = torch.arange(count)
    batches = even_batches(images, batch_size)
    sizes = [len(b) for b in batches]
    assert torch.equal(torch.cat(batches), images)
    assert max(sizes) - min(sizes) <= 1
    assert count == 1 or min(sizes) >= 2
    if batch_size >= 3:
        assert len(sizes) == math.ceil(count / batch_size) and max(sizes) <= batch_size


def test_deeplab_takes_any_count_but_one_image_and_one_is_refused_in_a_line() -> None:
    """DeepLabV3+'s image pooling gives its BN layer one value per channel for a batch of one
    image: three images in batches of two are one batch of three, as ``update_bn`` gives over
    that batch; one image alone is refused, naming the count, with the model left as it was,
    and the variance ratio, which has no variance to read there, refuses it too."""
    spec = ModelSpec("DeepLabV3Plus", TINY.encoder, 5, {"encoder_depth": 4, "decoder_channels": 16})
    ours, theirs = perturbed_model(spec, 0, counts=7), perturbed_model(spec, 0, counts=7)
    images = _images(3)
    reestimate_bn(ours, images, batch_size=2)
    for m in theirs.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # update_bn runs the whole model in training mode
    update_bn([normalize(images)], theirs)
    peer = theirs.state_dict()
    for name, mine in ours.state_dict().items():
        torch.testing.assert_close(mine, peer[name], rtol=1e-5, atol=1e-6, msg=name)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(
        LwmmError,
        match=r"^reestimate_bn: Expected more than 1 value per channel.*"
        r": measure on more than 1 image\(s\)$",
    ):
        reestimate_bn(ours, images[:1])
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())
    with pytest.raises(LwmmError, match=r"^bn_variance_ratio: layer 'decoder\.aspp\.0\.convs\.4\."):
        bn_variance_ratio(ours, images[:1])  # the pooled map has no variance (it was NaN)
    with pytest.raises(LwmmError, match=r"^bn_variance_ratio: no images"):
        bn_variance_ratio(ours, images[:0])
    assert 0 < bn_variance_ratio(ours, images[:2]) < 2


def test_dropout_stays_off_so_each_layer_measures_what_inference_feeds_it() -> None:
    """DeepLabV3+ has a dropout before a BN layer: re-estimated, every layer's statistics are
    those of the features inference gives it (the ratio is 1 within the biased variance's 1/n;
    with dropout on, 0.95), the same whatever the random state."""
    spec = ModelSpec("DeepLabV3Plus", TINY.encoder, 5, {"encoder_depth": 4, "decoder_channels": 16})
    images, models = _images(5), []
    for seed in (1, 2):
        model = perturbed_model(spec, 0, counts=7)
        assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
        torch.manual_seed(seed)
        models.append(reestimate_bn(model, images, batch_size=5))
    first, second = (m.state_dict() for m in models)
    assert all(torch.equal(first[name], second[name]) for name in first)
    fitted = bn_variance_ratio(models[0], images)
    assert fitted == pytest.approx(1, abs=1 / (5 * 4 * 4)), "n: 5 images of 4 x 4 at stride 16"


@pytest.mark.parametrize("statistics", ["mean", "var"])
def test_one_statistic_alone_is_measured_and_the_other_kept(statistics: str) -> None:
    """``statistics`` picks what is measured anew: that buffer is what a full re-estimation
    gives, the other the model's own, in every layer."""
    before = perturbed_model(TINY, 0, counts=7)
    both = reestimate_bn(perturbed_model(TINY, 0, counts=7), _images())
    one = reestimate_bn(perturbed_model(TINY, 0, counts=7), _images(), statistics=statistics)
    norms = [n for n, m in one.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    measured = f"running_{statistics}"
    kept = "running_var" if statistics == "mean" else "running_mean"
    for name in norms:
        mine, full, own = (m.get_submodule(name) for m in (one, both, before))
        assert not torch.equal(getattr(full, measured), getattr(own, measured)), name
        assert torch.equal(getattr(mine, measured), getattr(full, measured)), name
        assert torch.equal(getattr(mine, kept), getattr(own, kept)), name
    with pytest.raises(LwmmError, match="statistics='mean_and_var': give both, mean, var"):
        reestimate_bn(before, _images(), statistics="mean_and_var")


def test_named_layers_alone_are_measured_under_the_others_as_they_are() -> None:
    """``layers`` picks the BN layers measured anew, by module-name prefix: each gets the
    statistics of its inputs with every other layer normalising by its own (an eval-mode
    pass), every other layer keeps its statistics. A prefix over no BN layer is refused."""
    model, images = perturbed_model(TINY, 0, counts=7), _images(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    chosen = [n for n in norms if n.startswith("decoder.blocks.1.conv1.")]  # upstream: eval
    assert len(chosen) == 1 and len(norms) > 4
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        norms[n].register_forward_pre_hook(lambda _, args, n=n: seen.setdefault(n, args[0]))
        for n in chosen
    ]
    with torch.no_grad():
        model.eval()(normalize(images))
    for hook in hooks:
        hook.remove()
    reestimate_bn(model, images, batch_size=4, layers=["decoder.blocks.1.conv1"])
    assert not model.training
    for name, m in norms.items():
        if name in chosen:
            x = seen[name]
            torch.testing.assert_close(m.running_mean, x.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(m.running_var, x.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(m.running_var, before[f"{name}.running_var"]), name
            assert torch.equal(m.running_mean, before[f"{name}.running_mean"]), name
    with pytest.raises(LwmmError, match=r"layers: 'decoder\.blocks\.9' holds no BatchNorm layer"):
        reestimate_bn(model, images, layers=["decoder", "decoder.blocks.9"])
    with pytest.raises(LwmmError, match="layers: no module-name prefix given"):
        reestimate_bn(model, images, layers=[])


def test_a_failed_pass_leaves_the_model_as_it_was() -> None:
    model = perturbed_model(TINY, 0, counts=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    calls = []

    def second_pass_fails(*_: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")  # what a large batch on a GPU meets

    model.register_forward_hook(second_pass_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        reestimate_bn(model, _images(), batch_size=2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms) and model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_layer_the_pass_never_reaches_keeps_its_statistics() -> None:
    model = perturbed_model(TINY, 0)
    model.spare = torch.nn.BatchNorm2d(4)  # an auxiliary head's, say: forward() skips it
    model.spare.running_mean.fill_(3.0)
    model.spare.num_batches_tracked.fill_(5)
    reestimate_bn(model, _images(2))
    assert torch.equal(model.spare.running_mean, torch.full((4,), 3.0))
    assert model.spare.num_batches_tracked == 5 and model.spare.momentum == 0.1


def test_the_variance_ratio_compares_each_layers_inputs_with_its_running_variance() -> None:
    """Per layer and channel, the unbiased variance of the layer's inputs over all the images
    (the model in eval mode) over its running variance; the geometric mean over channels and
    the layers the pass reaches (of the region asked for). Batches only split the work, and
    the model is left as it was: its mode and its statistics."""
    model = perturbed_model(TINY, 0, counts=7)
    model.spare = torch.nn.BatchNorm2d(4)  # never reached: not counted
    model.train()  # measured in eval mode all the same
    norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in norms}
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0]))
        for name, m in norms.items()
    ]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = _images(5)
    ratio = {region: bn_variance_ratio(model, images, region, 2) for region in (None, "decoder")}
    for hook in hooks:
        hook.remove()
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    first = len(even_batches(images, 2))  # the batches of the first call
    logs = {
        name: (torch.cat(seen[name][:first]).double().var((0, 2, 3)) / m.running_var).log().mean()
        for name, m in norms.items()
        if seen[name]
    }
    decoder = [n for n in logs if region_of(n) == "decoder"]
    assert "spare" not in logs and 0 < len(decoder) < len(logs)
    for region, names in ((None, list(logs)), ("decoder", decoder)):
        by_hand = math.exp(float(torch.stack([logs[n] for n in names]).mean()))
        assert ratio[region] == pytest.approx(by_hand, rel=1e-9) and ratio[region] != 1
    assert bn_variance_ratio(model, images, batch_size=5) == pytest.approx(ratio[None], rel=1e-9)
    assert math.isnan(bn_variance_ratio(model, images, "head")), "TINY's head has no BN layer"
    layers = bn_variance_ratios(model, images, batch_size=2)
    assert sorted(layers) == sorted(logs)
    for name, value in layers.items():
        assert value == pytest.approx(math.exp(float(logs[name])), rel=1e-9), name
    assert list(bn_variance_ratios(model, images, "decoder")) == decoder


def test_statistics_measured_on_the_images_fit_them() -> None:
    """After :func:`reestimate_bn` on the same images in one batch the ratio is 1, within what
    the biased variance of training mode leaves; a layer's running variance four times its
    inputs' then takes the geometric mean down by 4 ** (1 / layers)."""
    model, images = perturbed_model(TINY, 0, counts=7), _images(5)
    assert bn_variance_ratio(model, images) < 0.5, "perturbed statistics"
    fitted = bn_variance_ratio(reestimate_bn(model, images, batch_size=5), images)
    assert fitted == pytest.approx(1, abs=1 / (5 * 8 * 8)), "n: 5 images of 8 x 8 at stride 8"
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    norms[-1].running_var.mul_(4)  # the last layer: its output reaches no other BN layer
    assert bn_variance_ratio(model, images) == pytest.approx(fitted / 4 ** (1 / len(norms)))


def test_the_variance_ratio_figure_shows_each_model_layer_by_layer() -> None:
    """One trace per model, a point per BN layer at its place in the pass (named on hover),
    the regions shaded and the line of fit at 1: the perturbed model's points off it, the
    re-estimated one's on it."""
    model, images = perturbed_model(TINY, 0, counts=7), _images(5)
    stale = bn_variance_ratios(model, images)
    fitted = bn_variance_ratios(reestimate_bn(model, images, batch_size=5), images)
    fig = variance_ratio_figure({"stale": stale, "measured anew": fitted})
    first, second = fig.data
    assert (first.name, second.name) == ("stale", "measured anew")
    assert list(first.x) == list(range(1, len(stale) + 1))
    assert list(first.customdata) == list(stale) == list(fitted)
    assert list(first.y) == pytest.approx(list(stale.values()))
    assert max(abs(math.log(y)) for y in first.y) > 0.5
    assert max(abs(math.log(y)) for y in second.y) < 0.01
    assert fig.layout.yaxis.type == "log"
    shown = {a.text for a in fig.layout.annotations}
    assert {"encoder", "decoder", "the statistics fit"} <= shown
    with pytest.raises(LwmmError, match=r"^variance_ratio_figure: no BatchNorm layer"):
        variance_ratio_figure({"a model without BN": {}})


def test_several_domains_take_turns_so_every_batch_mixes_them() -> None:
    size = (64, 128)
    both = train_images(["real", "night"], 3, size)
    assert both.shape == (6, 3, *size)
    assert torch.equal(both[0::2], train_images("real", 3, size))
    assert torch.equal(both[1::2], train_images("night", 3, size))


@pytest.mark.parametrize(
    ("images", "batch_size", "message"),
    [
        (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), 50, r"images are uint8; give floats"),
        (torch.rand(2, 64, 64, 3), 50, r"images of shape \(2, 64, 64, 3\); give \(N, 3, H, W\)"),
        (torch.rand(2, 3, 64, 64) * 255, 50, r"image values span .*; give floats in \[0, 1\]"),
        (torch.rand(0, 3, 64, 64), 50, r"no images to measure BN statistics on"),
        (torch.rand(2, 3, 64, 64), 0, r"^batch_size=0"),
    ],
)
def test_images_bn_cannot_be_measured_on_are_refused_in_one_line(
    images: torch.Tensor, batch_size: int, message: str
) -> None:
    model = perturbed_model(TINY, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LwmmError, match=message):
        reestimate_bn(model, images, batch_size)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "untouched"


def test_lwmm_merge_reestimate_writes_the_merge_with_statistics_of_the_images(
    quick_zoo: Path, tmp_path: Path, capsys
) -> None:
    """The file holds what reestimate_bn gives the in-memory merge, on the images read at the
    anchor's resolution, and its provenance says on what."""
    adapted = scenario_checkpoints(load_manifest(quick_zoo), "multi-target")
    out = tmp_path / "adabn.safetensors"
    args = ["merge", *adapted, "--method", "isotropic", "-o", str(out)]
    assert main([*args, "--reestimate", "real", "night", "--reestimate-images", "2"]) == 0
    assert "bn re-estimated on real, night (2 train images each)" in capsys.readouterr().out
    saved = load_checkpoint(out)
    size = saved.resolution
    assert saved.provenance["bn_reestimated"] == {
        "domains": ["real", "night"],
        "images": 2,
        "resolution": list(size),
    }
    merged = merged_model(Pool(adapted, device="cpu"), method="isotropic")
    expected = reestimate_bn(merged, train_images(["real", "night"], 2, size)).state_dict()
    assert expected.keys() == saved.tensors.keys()
    for name, tensor in saved.tensors.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=name)
