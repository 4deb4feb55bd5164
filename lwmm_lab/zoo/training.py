"""One training loop for unsupervised domain adaptation, and the strategies that plug into it.

Every step takes a labelled source batch and, for the UDA strategies, an unlabelled target
batch. The loss is the source cross-entropy plus the strategy's target term (a panoptic model
adds Panoptic-DeepLab's centre and offset losses on the source's instances). The head (decoder
and segmentation head) learns 10x faster than the backbone (encoder), as in ADVENT,
AdaptSegNet, MaxSquare and DAFormer. Strategies are registered by name in ``STRATEGIES``:

- ``source_only``: no target term.
- ``minent``: normalised entropy of the target predictions (ADVENT's MinEnt).
- ``maxsquare``: ``-0.5 * mean(p^2)`` on the target (MaxSquare).
- ``advent``: a discriminator sees the self-information maps ``-p log p / log C`` (ADVENT).
- ``adaptsegnet``: the same discriminator on the softmax outputs (AdaptSegNet).
- ``selftrain``: an EMA teacher's confident pseudo-labels, with ClassMix (DAFormer-style).

The originals' weights were tuned for 40k-250k iterations on 1024-px images; ours run for a
few hundred on small images, so the weights are scaled up (see ``DEFAULT_WEIGHTS``).
Batches are a pure function of (seed, step), so a run resumed at step k sees what an
uninterrupted run would have seen.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwmm_lab.analysis.evaluation import normalize
from lwmm_lab.analysis.panoptic import panoptic_loss
from lwmm_lab.data import labels as L
from lwmm_lab.engine.panoptic import is_panoptic
from lwmm_lab.errors import LwmmError, check_name
from lwmm_lab.progress import progress_bar

#: Target-term weights for our short schedules, and the originals' for reference.
DEFAULT_WEIGHTS = {
    "minent": 0.05,  # ADVENT: 0.001
    "maxsquare": 0.5,  # MaxSquare: 0.1
    "advent": 0.01,  # ADVENT: 0.001
    "adaptsegnet": 0.01,  # AdaptSegNet: 0.001
    "selftrain": 1.0,  # DAFormer: 1.0 (scaled per image by the confident fraction)
}


@dataclass
class ImagePool:
    """Images (N, H, W, 3) uint8, trainId labels (N, H, W) uint8 and instance ids (N, H, W)
    (0: none) held in memory; labels and instances may be absent."""

    images: np.ndarray
    labels: np.ndarray | None = None
    instances: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def batch(
        self, seed: int, step: int, size: int, device: torch.device
    ) -> tuple[Tensor, Tensor | None]:
        """A random batch with random horizontal flips, fixed by (seed, step)."""
        return self.panoptic_batch(seed, step, size, device)[:2]

    def panoptic_batch(
        self, seed: int, step: int, size: int, device: torch.device
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """:meth:`batch` with the same images' instance ids (flipped alike), when held."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        index = torch.randint(len(self.images), (size,), generator=g).numpy()
        flip = torch.rand(size, generator=g).numpy() < 0.5

        def pick(array: np.ndarray | None) -> Tensor | None:
            if array is None:
                return None
            chosen = array[index]
            chosen[flip] = chosen[flip, :, ::-1]
            return torch.from_numpy(np.ascontiguousarray(chosen)).to(device)

        x = pick(self.images).permute(0, 3, 1, 2).float().div_(255)
        labels, instances = pick(self.labels), pick(self.instances)
        return (
            x,
            None if labels is None else labels.long(),
            None if instances is None else instances.long(),
        )


@dataclass(frozen=True)
class TrainConfig:
    """A run's schedule: steps, batch size, learning rates, the strategy's weight.

    ``lr`` is the backbone's learning rate; the head gets ``lr * head_lr_mult``. The learning
    rate warms up linearly for ``warmup`` steps, then decays polynomially (power 0.9).
    ``class_weights`` (one per output channel) weight the source cross-entropy.
    """

    steps: int
    batch_size: int = 8
    lr: float = 2e-4
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    warmup: int = 0
    weight: float | None = None
    seed: int = 0
    ema: float = 0.99
    confidence: float = 0.9
    classmix: bool = True
    discriminator_lr: float = 1e-4
    class_weights: tuple[float, ...] | None = None


class Strategy:
    """The target-side part of a UDA method; the base class is ``source_only``.

    ``target_loss`` returns named loss terms (added to the source cross-entropy);
    ``after_step`` updates anything the method keeps besides the model (a teacher, a
    discriminator). ``state_dict`` / ``load_state_dict`` let a run resume.
    """

    uses_target = False

    def __init__(self, model: nn.Module, config: TrainConfig, classes: tuple[int, ...]) -> None:
        self.config = config
        self.classes = classes
        default = DEFAULT_WEIGHTS.get(self.name, 0.0)
        self.weight = default if config.weight is None else config.weight

    name = "source_only"

    def target_loss(
        self, model: nn.Module, source_logits: Tensor, xs: Tensor, ys: Tensor, xt: Tensor, step: int
    ) -> dict[str, Tensor]:
        return {}

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after the model's optimiser step."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make a UDA strategy available to runs by its ``name`` (a class decorator)."""
    STRATEGIES[cls.name] = cls
    return cls


register_strategy(Strategy)


def entropy_map(probabilities: Tensor) -> Tensor:
    """Per-class self-information ``-p log p / log C`` (N, C, H, W), in [0, 1] once summed."""
    c = probabilities.shape[1]
    return -probabilities * torch.log(probabilities.clamp_min(1e-12)) / math.log(c)


@register_strategy
class MinEnt(Strategy):
    """Minimise the normalised entropy of target predictions."""

    name, uses_target = "minent", True

    def target_loss(
        self, model: nn.Module, source_logits: Tensor, xs: Tensor, ys: Tensor, xt: Tensor, step: int
    ) -> dict[str, Tensor]:
        p = model(normalize(xt)).softmax(1)
        return {"entropy": self.weight * entropy_map(p).sum(1).mean()}


@register_strategy
class MaxSquare(Strategy):
    """Maximise the squared probabilities on the target: -0.5 * mean(p^2)."""

    name, uses_target = "maxsquare", True

    def target_loss(
        self, model: nn.Module, source_logits: Tensor, xs: Tensor, ys: Tensor, xt: Tensor, step: int
    ) -> dict[str, Tensor]:
        p = model(normalize(xt)).softmax(1)
        return {"maxsquare": -0.5 * self.weight * p.square().mean()}


def discriminator(in_channels: int, width: int = 16) -> nn.Module:
    """ADVENT's fully convolutional discriminator: 4 convs (k4, s2, LeakyReLU 0.2) + 1 conv.

    ``width`` is 16 here (64 in the originals): our maps are small and the CPU budget tight.
    """
    layers: list[nn.Module] = []
    channels = [in_channels, width, width * 2, width * 4, width * 8]
    for a, b in itertools.pairwise(channels):
        layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
    layers.append(nn.Conv2d(channels[-1], 1, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


class _Adversarial(Strategy):
    """Output-space adversarial training: a discriminator tells source from target maps."""

    uses_target = True
    SOURCE, TARGET = 0.0, 1.0

    def __init__(self, model: nn.Module, config: TrainConfig, classes: tuple[int, ...]) -> None:
        super().__init__(model, config, classes)
        device = next(model.parameters()).device
        self.disc = discriminator(len(classes)).to(device)
        self.disc_opt = torch.optim.Adam(
            self.disc.parameters(), lr=config.discriminator_lr, betas=(0.9, 0.99)
        )
        self._maps: tuple[Tensor, Tensor] | None = None

    def output_map(self, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def target_loss(
        self, model: nn.Module, source_logits: Tensor, xs: Tensor, ys: Tensor, xt: Tensor, step: int
    ) -> dict[str, Tensor]:
        target_map = self.output_map(model(normalize(xt)))
        self._maps = (self.output_map(source_logits).detach(), target_map.detach())
        for p in self.disc.parameters():
            p.requires_grad_(False)
        d = self.disc(target_map)
        fool = F.binary_cross_entropy_with_logits(d, torch.full_like(d, self.SOURCE))
        for p in self.disc.parameters():
            p.requires_grad_(True)
        return {"adversarial": self.weight * fool}

    def after_step(self, model: nn.Module, step: int) -> None:
        source_map, target_map = self._maps
        loss = 0.0
        for m, label in ((source_map, self.SOURCE), (target_map, self.TARGET)):
            d = self.disc(m)
            loss = loss + 0.5 * F.binary_cross_entropy_with_logits(d, torch.full_like(d, label))
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"disc": self.disc.state_dict(), "disc_opt": self.disc_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.disc.load_state_dict(state["disc"])
        self.disc_opt.load_state_dict(state["disc_opt"])


@register_strategy
class AdvEnt(_Adversarial):
    """ADVENT: the discriminator sees the C-channel self-information maps."""

    name = "advent"

    def output_map(self, logits: Tensor) -> Tensor:
        return entropy_map(logits.softmax(1))


@register_strategy
class AdaptSegNet(_Adversarial):
    """AdaptSegNet: the discriminator sees the softmax outputs."""

    name = "adaptsegnet"

    def output_map(self, logits: Tensor) -> Tensor:
        return logits.softmax(1)


@register_strategy
class SelfTrain(Strategy):
    """DAFormer-style self-training: EMA teacher, confidence-weighted pseudo-labels, ClassMix.

    The teacher follows ``theta_t = a theta_t + (1 - a) theta_s`` with
    ``a = min(1 - 1/(t + 1), ema)``; its argmax on the target is the pseudo-label, weighted by
    the fraction of pixels whose confidence reaches ``confidence``. ClassMix pastes half of the
    classes of a source image onto a target image. The teacher labels with its BatchNorm
    layers normalising by the target batch and its dropout off (an FPN's or a DeepLabV3+'s),
    as DAFormer's does.
    """

    name, uses_target = "selftrain", True

    def __init__(self, model: nn.Module, config: TrainConfig, classes: tuple[int, ...]) -> None:
        super().__init__(model, config, classes)
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._teacher_norms = [
            m for m in self.teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    def target_loss(
        self, model: nn.Module, source_logits: Tensor, xs: Tensor, ys: Tensor, xt: Tensor, step: int
    ) -> dict[str, Tensor]:
        with torch.no_grad():
            # BatchNorm in batch-statistics mode: the teacher sees the target's statistics.
            # Its dropout stays off (DAFormer turns it off): pseudo-labels of the whole model.
            for m in self._teacher_norms:
                m.train()
            p = self.teacher(normalize(xt)).softmax(1)
            for m in self._teacher_norms:
                m.eval()
            confidence, pseudo = p.max(1)
            weight = (confidence >= self.config.confidence).float().mean((1, 2), keepdim=True)
            weight = weight.expand_as(pseudo).clone()
            images, labels = xt, pseudo
            if self.config.classmix:
                mask = _classmix_masks(ys, step, self.config.seed)
                images = torch.where(mask[:, None], xs, xt)
                labels = torch.where(mask, ys, pseudo)
                weight = torch.where(mask, torch.ones_like(weight), weight)
        logits = model(normalize(images))
        loss = F.cross_entropy(logits, labels, ignore_index=L.IGNORE, reduction="none")
        return {"pseudo": self.weight * (loss * weight).mean()}

    def after_step(self, model: nn.Module, step: int) -> None:
        alpha = min(1 - 1 / (step + 2), self.config.ema)
        with torch.no_grad():
            pairs = zip(
                self.teacher.state_dict().values(), model.state_dict().values(), strict=True
            )
            for t, s in pairs:
                if t.is_floating_point():
                    t.mul_(alpha).add_(s, alpha=1 - alpha)
                else:
                    t.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])


def _classmix_masks(labels: Tensor, step: int, seed: int) -> Tensor:
    """Per source image, a mask of half of its classes (chosen by (seed, step))."""
    g = torch.Generator().manual_seed(seed * 7_919 + step)
    masks = torch.zeros_like(labels, dtype=torch.bool)
    for i, label in enumerate(labels):
        present = label.unique()
        present = present[present != L.IGNORE]
        if len(present) == 0:
            continue
        order = torch.randperm(len(present), generator=g).to(present.device)
        chosen = present[order[: (len(present) + 1) // 2]]
        masks[i] = torch.isin(label, chosen)
    return masks


def balanced_class_weights(
    labels: np.ndarray, classes: tuple[int, ...], power: float = 0.5, clip: float = 10.0
) -> tuple[float, ...]:
    """Source cross-entropy weights ``(median frequency / frequency) ** power``, clipped.

    Small classes (poles, signs, persons) cover few pixels; in a few hundred steps an
    unweighted loss never learns them. DAFormer samples rare classes more often for the same
    reason; weighting is its simplest form. power 0.5 scored best on our synthetic val.
    """
    counts = np.bincount(labels.ravel(), minlength=256)[list(classes)].astype(np.float64)
    freq = counts / max(counts.sum(), 1)
    median = np.median(freq[freq > 0]) if (freq > 0).any() else 1.0
    weights = (median / np.maximum(freq, 1e-6)) ** power
    return tuple(float(w) for w in np.clip(weights, 1 / clip, clip))


def parameter_groups(
    model: nn.Module, lr: float, head_lr_mult: float, weight_decay: float
) -> list[dict[str, Any]]:
    """The encoder at ``lr``, everything else (decoder, head) at ``lr * head_lr_mult``."""
    backbone, head = [], []
    for name, p in model.named_parameters():
        (backbone if name.startswith("encoder.") else head).append(p)
    head_lr = lr * head_lr_mult
    return [
        {"params": backbone, "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
        {"params": head, "lr": head_lr, "base_lr": head_lr, "weight_decay": weight_decay},
    ]


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then polynomial decay (power 0.9) to 0 at the last step."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    return (1 - step / config.steps) ** 0.9


def train(
    model: nn.Module,
    source: ImagePool,
    target: ImagePool | None,
    strategy: str,
    config: TrainConfig,
    classes: tuple[int, ...] = L.CLASS_SETS["cityscapes-19"],
    checkpoint_steps: tuple[int, ...] = (),
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    description: str = "",
    position: int = 0,
) -> nn.Module:
    """Train ``model`` in place with ``strategy``; call ``on_checkpoint(step, state)`` at steps.

    ``state`` holds the optimiser and strategy state, enough to :func:`train` again from that
    step with ``resume=state``. ``position`` is the row of the progress bar (runs training
    side by side each have their own).
    """
    check_name(strategy, STRATEGIES, "strategy")
    device = next(model.parameters()).device
    unit = STRATEGIES[strategy](model, config, classes)
    if unit.uses_target and target is None:
        raise LwmmError(f"strategy '{strategy}' needs target images")
    panoptic = is_panoptic(model)
    if panoptic and source.instances is None:
        raise LwmmError("a panoptic model needs source instance ids to train its heads")
    groups = parameter_groups(model, config.lr, config.head_lr_mult, config.weight_decay)
    optimizer = torch.optim.AdamW(groups)
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        unit.load_state_dict(resume["strategy"])
        start = resume["step"]
    to_index = torch.from_numpy(L.to_model_index(classes).astype(np.int64)).to(device)
    weights = None
    if config.class_weights is not None:
        weights = torch.tensor(config.class_weights, dtype=torch.float32, device=device)
    model.train()
    bar = progress_bar(
        range(start, config.steps),
        desc=description or strategy,
        leave=False,
        unit="step",
        position=position,
    )
    for step in bar:
        factor = learning_rate_factor(step, config)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        xs, ys, instances = source.panoptic_batch(config.seed, step, config.batch_size, device)
        if panoptic:
            logits, center, offset = model.forward_panoptic(normalize(xs))
            losses = panoptic_loss(center, offset, ys, instances)
        else:
            logits, losses = model(normalize(xs)), {}
        ys = to_index[ys]
        losses["source"] = F.cross_entropy(logits, ys, weight=weights, ignore_index=L.IGNORE)
        if unit.uses_target:
            xt, _ = target.batch(config.seed + 1, step, config.batch_size, device)
            losses.update(unit.target_loss(model, logits, xs, ys, xt, step))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        unit.after_step(model, step)
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()}, refresh=False)
        if step + 1 in checkpoint_steps and on_checkpoint is not None:
            state = {
                "step": step + 1,
                "optimizer": optimizer.state_dict(),
                "strategy": unit.state_dict(),
            }
            model.eval()
            on_checkpoint(step + 1, state)
            model.train()
    model.eval()
    return model
