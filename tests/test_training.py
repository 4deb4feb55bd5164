"""The UDA training loop and its strategies, on a tiny model and tiny synthetic pools."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lwmm_lab import ModelSpec
from lwmm_lab.data import labels as L
from lwmm_lab.data.domains import generate
from lwmm_lab.zoo.training import (
    STRATEGIES,
    ImagePool,
    TrainConfig,
    _classmix_masks,
    entropy_map,
    parameter_groups,
    train,
)

SPEC = ModelSpec("Unet", "tu-resnet10t", 19, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]})


@pytest.fixture(scope="module")
def pools() -> tuple[ImagePool, ImagePool]:
    source = [generate("synthetic", "train", i, size=(32, 64)) for i in range(6)]
    target = [generate("real", "train", i, size=(32, 64)) for i in range(6)]
    return (
        ImagePool(np.stack([s.image for s in source]), np.stack([s.label for s in source])),
        ImagePool(np.stack([s.image for s in target])),
    )


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SPEC.build()


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_trains_and_changes_the_model(strategy: str, pools) -> None:
    source, target = pools
    model = _model()
    before = copy.deepcopy(model.state_dict())
    train(model, source, target, strategy, TrainConfig(steps=3, batch_size=2, lr=1e-3))
    after = model.state_dict()
    changed = [
        k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])
    ]
    assert changed, "the weights moved"
    assert all(bool(torch.isfinite(v).all()) for v in after.values() if v.is_floating_point())
    assert not model.training


def test_the_teacher_labels_with_its_dropout_off(pools) -> None:
    """DAFormer's teacher normalises by the target batch, its dropout off: an FPN teacher's
    pseudo-labels, and so the loss, do not depend on the random state, and it is left in eval
    mode."""
    source, target = pools
    fpn = ModelSpec("FPN", SPEC.encoder, 19, {"encoder_depth": 3})
    torch.manual_seed(0)
    student = fpn.build()  # eval mode: its own dropout is off too
    assert any(isinstance(m, torch.nn.Dropout2d) for m in student.modules())
    config = TrainConfig(steps=1, batch_size=4, confidence=0.0, classmix=False)
    unit = STRATEGIES["selftrain"](student, config, tuple(range(19)))
    (xs, ys), (xt, _) = (pool.batch(0, 0, 4, torch.device("cpu")) for pool in (source, target))
    losses = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        losses.append(unit.target_loss(student, student(xs), xs, ys, xt, 0)["pseudo"])
    assert torch.equal(*losses) and losses[0] > 0
    assert not any(m.training for m in unit.teacher.modules())


def test_head_learns_ten_times_faster() -> None:
    model = _model()
    groups = parameter_groups(model, lr=1e-4, head_lr_mult=10, weight_decay=0)
    assert groups[0]["lr"] == 1e-4 and groups[1]["lr"] == pytest.approx(1e-3)
    encoder = {id(p) for p in groups[0]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in encoder) == name.startswith("encoder."), name


@pytest.mark.parametrize("strategy", ["advent", "selftrain"])
def test_resuming_gives_the_same_weights_as_an_uninterrupted_run(strategy: str, pools) -> None:
    source, target = pools
    config = TrainConfig(steps=4, batch_size=2, lr=1e-3)
    straight = train(_model(), source, target, strategy, config)
    saved = {}

    def keep(step: int, state: dict) -> None:
        saved["state"] = copy.deepcopy(state)
        saved["weights"] = copy.deepcopy(first.state_dict())

    first = _model()
    train(first, source, target, strategy, config, checkpoint_steps=(2,), on_checkpoint=keep)
    resumed = _model()
    resumed.load_state_dict(saved["weights"])
    train(resumed, source, target, strategy, config, resume=saved["state"])
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_entropy_map_is_normalised() -> None:
    uniform = torch.full((1, 19, 2, 2), 1 / 19)
    torch.testing.assert_close(entropy_map(uniform).sum(1), torch.ones(1, 2, 2))
    certain = torch.zeros(1, 19, 2, 2)
    certain[:, 3] = 1
    assert float(entropy_map(certain).sum()) == 0.0


def test_classmix_pastes_half_of_the_classes() -> None:
    label = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, L.IGNORE]]])
    mask = _classmix_masks(label, step=0, seed=0)
    pasted = set(label[mask].tolist())
    assert len(pasted) == 2 and pasted <= {0, 1, 2, 3}
    assert not mask[label == L.IGNORE].any()
