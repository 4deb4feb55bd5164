"""The zoo's recipe: which runs it trains, and the sizes and schedules they share.

A base model is trained supervised on ``synthetic``; every other run starts from it (the
encoder always, the decoder and head where the architecture and classes match), so all zoo
models share their pre-training as the paper assumes. The runs:

- ``strategies``: the six strategies of :mod:`lwmm_lab.zoo.training`, synthetic -> real;
- ``checkpoints``: the four checkpoints (25/50/75/100 %) of every run;
- ``other-classes``: a SYNTHIA-16 model (16-class head), synthetic-16 -> real;
- ``other-decoders``: FPN and DeepLabV3+ on the base encoder;
- ``multi-target``: one strategy adapted to ``foggy`` and to ``night`` separately, and on the
  union of the three targets (the multi-target paper's data-combination baseline);
- ``seeds``: a second seed of one strategy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lwmm_lab.data import labels as L
from lwmm_lab.data.domains import TARGET_DOMAINS
from lwmm_lab.engine.spec import ModelSpec

#: Bump when training changes what a run produces, so existing zoos are retrained, not reused.
RECIPE = 2
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Run:
    """One training run of the zoo."""

    name: str
    strategy: str
    scenarios: tuple[str, ...]
    source: str = "synthetic"
    targets: tuple[str, ...] = ("real",)
    arch: str = "Unet"
    classes: str = "cityscapes-19"
    seed: int = 0
    steps_factor: float = 1.0


@dataclass(frozen=True)
class ZooConfig:
    """Sizes and schedules of a zoo; ``quick()`` is the tiny one the tests use."""

    resolution: tuple[int, int] = (96, 192)
    encoder: str = "tu-mobilenetv3_small_100"
    decoder_channels: tuple[int, ...] = (64, 32, 16, 8, 8)
    base_steps: int = 900
    base_lr: float = 3e-3
    base_batch: int = 8
    steps: int = 120
    lr: float = 3e-4
    batch: int = 4
    train_images: int = 500
    val_images: int = 40
    quick: bool = False
    runs: tuple[Run, ...] = field(default_factory=lambda: DEFAULT_RUNS)

    @classmethod
    def quick_config(cls) -> ZooConfig:
        """A zoo in well under a minute: tiny images, a few steps; weak but real models."""
        return cls(
            resolution=(64, 128),
            base_steps=80,
            base_batch=8,
            steps=12,
            train_images=64,
            val_images=8,
            quick=True,
        )

    def spec(self, arch: str, classes: str) -> ModelSpec:
        n = len(L.CLASS_SETS[classes])
        kwargs: dict[str, Any] = {"encoder_depth": 5}
        if arch == "Unet":
            kwargs["decoder_channels"] = list(self.decoder_channels)
        elif arch == "FPN":
            kwargs.update(decoder_pyramid_channels=64, decoder_segmentation_channels=32)
        elif arch == "DeepLabV3Plus":
            kwargs.update(decoder_channels=64, encoder_output_stride=16)
        return ModelSpec(arch, self.encoder, n, kwargs)


DEFAULT_RUNS = (
    Run("source_only", "source_only", ("strategies", "checkpoints")),
    Run("minent", "minent", ("strategies", "checkpoints", "multi-target")),
    Run("maxsquare", "maxsquare", ("strategies", "checkpoints")),
    Run("advent", "advent", ("strategies", "checkpoints")),
    Run("adaptsegnet", "adaptsegnet", ("strategies", "checkpoints")),
    Run("selftrain", "selftrain", ("strategies", "checkpoints")),
    Run("synthia16-minent", "minent", ("other-classes", "checkpoints"), source="synthetic-16",
        classes="synthia-16"),
    Run("fpn-minent", "minent", ("other-decoders", "checkpoints"), arch="FPN", steps_factor=2.0),
    Run("deeplabv3plus-minent", "minent", ("other-decoders", "checkpoints"), arch="DeepLabV3Plus",
        steps_factor=2.0),
    Run("minent-foggy", "minent", ("multi-target", "checkpoints"), targets=("foggy",)),
    Run("minent-night", "minent", ("multi-target", "checkpoints"), targets=("night",)),
    Run("minent-union", "minent", ("multi-target", "checkpoints"), targets=TARGET_DOMAINS),
    Run("minent-seed1", "minent", ("seeds", "checkpoints"), seed=1),
)  # fmt: skip
BASE = Run("base", "source_only", ("base",), targets=())


def run_fingerprint(run: Run, config: ZooConfig) -> str:
    """What a checkpoint was trained with; a change means it is retrained (and re-evaluated)."""
    settings = asdict(replace(config, runs=()))
    record = {"run": asdict(run), "config": settings, "recipe": RECIPE}
    text = json.dumps(record, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
