"""The zoo's recipe: which runs it trains, and the sizes and schedules they share.

A **base** model is trained supervised on ``synthetic``. Every other run starts from it in one
of two ways (``Run.init``), which give the two regimes real checkpoints come in:

- ``base``: the base's whole model (encoder, decoder and head where the architecture and classes
  match). Models fine-tuned from one source model stay in one basin: linearly connected, so a
  plain average of them works.
- ``encoder``: the base's encoder only; the decoder and head are fresh, from the run's own seed.
  This is how separately published UDA models relate: one pre-trained backbone, decoders
  trained independently. Their decoders compute similar functions with their channels in
  another order, so averaging them collapses unless they are aligned first
  (:mod:`lwmm_lab.engine.align`).

The runs, by scenario (the manifest's ``scenarios`` use exactly these names):

- ``strategies``: the six strategies of :mod:`lwmm_lab.zoo.training`, synthetic -> real, from
  the base's whole model (one source model);
- ``independent``: the same six strategies from the base's encoder only, each with a fresh
  decoder and head from its own seed;
- ``checkpoints``: the four checkpoints (25/50/75/100 %) of every run of those two families
  (the other runs keep their final checkpoint only);
- ``other-classes``: a SYNTHIA-16 model (16-class head), synthetic-16 -> real, encoder only;
- ``other-decoders``: FPN and DeepLabV3+ on the base encoder (their decoders are their own);
- ``multi-target``: ``minent`` adapted to ``foggy`` and to ``night`` separately, and on the
  union of the three targets (the multi-target paper's data-combination baseline), from the
  base's whole model like ``minent``;
- ``seeds``: ``minent`` with another seed (data order), from the base's whole model;
- ``panoptic``: a panoptic Unet (:mod:`lwmm_lab.engine.panoptic`), MinEnt, synthetic-16 (with
  instance ids) -> real, from the base's encoder like the semantic models it is merged with
  (the 16-class model, and the 19-class independent ones through their shared tensors).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lwmm_lab.data import labels as L
from lwmm_lab.data.domains import TARGET_DOMAINS, check_domain
from lwmm_lab.engine.spec import ModelSpec
from lwmm_lab.errors import (
    LwmmError,
    check_count,
    check_finite,
    check_image_size,
    check_name,
    check_seed,
    naming,
)

#: Bump when training changes what a run produces, so existing zoos are retrained, not reused.
RECIPE = 3
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


#: How a run starts from the base: its whole model, or its encoder only.
INITS = ("base", "encoder")
STRATEGY_RUNS = ("source_only", "minent", "maxsquare", "advent", "adaptsegnet", "selftrain")
#: The scenarios, in the order the lab offers them.
SCENARIOS = (
    "independent",
    "strategies",
    "checkpoints",
    "other-classes",
    "other-decoders",
    "multi-target",
    "seeds",
    "panoptic",
)
#: The two families of strategy models, and the run name of a strategy in each.
FAMILIES = {"strategies": "{}", "independent": "indep-{}"}


#: How far apart the seeds of one run are in zoos of consecutive seeds (no run's own seed is
#: this large, so no two runs of two zoos share a seed).
SEED_STRIDE = 1000


@dataclass(frozen=True)
class Run:
    """One training run of the zoo.

    ``init`` is ``base`` (start from the base's whole model where shapes match) or ``encoder``
    (the base's encoder; decoder and head fresh from ``seed``); ``fractions`` are the points
    of the run that are kept as checkpoints.
    """

    name: str
    strategy: str
    scenarios: tuple[str, ...]
    source: str = "synthetic"
    targets: tuple[str, ...] = ("real",)
    arch: str = "Unet"
    classes: str = "cityscapes-19"
    seed: int = 0
    steps_factor: float = 1.0
    init: str = "base"
    fractions: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        """Refuse, naming the run, what a build would trip on after minutes of training: an
        unknown domain, class set or init, steps that are not a positive factor, checkpoint
        fractions outside (0, 1]."""
        with naming(f"run '{self.name}'"):
            for domain in (self.source, *self.targets):
                check_domain(domain)
            check_name(self.classes, L.CLASS_SETS, "classes")
            check_name(self.init, INITS, "init")
            if check_finite("steps_factor", self.steps_factor) <= 0:
                raise LwmmError(f"steps_factor={self.steps_factor}: give a number > 0")
            if not self.fractions or not all(
                0 < check_finite("fraction", f) <= 1 for f in self.fractions
            ):
                raise LwmmError(f"fractions {self.fractions}: give points in (0, 1]")


#: Architectures whose decoder pools the whole image before a BatchNorm layer (ASPP), which
#: in training mode needs more than one image per batch.
POOLING_ARCHS = ("DeepLabV3", "DeepLabV3Plus")


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
    seed: int = 0
    runs: tuple[Run, ...] = field(default_factory=lambda: DEFAULT_RUNS)

    def __post_init__(self) -> None:
        """Refuse sizes and schedules a build cannot train with, by name (0 steps or a batch
        of 0 built a zoo of untrained models without a word; a batch of one failed inside
        torch once a DeepLabV3+ run began, minutes in), and runs of one name."""
        check_image_size(self.resolution)
        for name in ("base_steps", "base_batch", "steps", "batch", "train_images", "val_images"):
            check_count(name, getattr(self, name))
        pooled = [run.name for run in self.runs if run.arch in POOLING_ARCHS]
        if self.batch == 1 and pooled:
            raise LwmmError(
                f"batch=1: run '{pooled[0]}' cannot train on one image a step (its image "
                "pooling gives a BatchNorm layer one value per channel); give 2 or more"
            )
        for name in ("base_lr", "lr"):
            if check_finite(name, getattr(self, name)) <= 0:
                raise LwmmError(f"{name}={getattr(self, name)}: give a number > 0")
        check_seed(self.seed)
        names = [run.name for run in self.runs]
        if twice := sorted({n for n in names if names.count(n) > 1 or n == "base"}):
            raise LwmmError(f"run '{twice[0]}' is named twice (the base is 'base')")

    def run_seed(self, run: Run) -> int:
        """The seed a run trains with: its own, moved by the zoo's ``seed`` (0 is the published
        zoo; another seed changes every run's initialisation and data order, the base's too)."""
        return run.seed + SEED_STRIDE * self.seed

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
        """The zoo's model of architecture ``arch`` for class set ``classes``."""
        n = len(L.CLASS_SETS[classes])
        kwargs: dict[str, Any] = {"encoder_depth": 5}
        if arch in ("Unet", "PanopticUnet"):
            kwargs["decoder_channels"] = list(self.decoder_channels)
        elif arch == "FPN":
            kwargs.update(decoder_pyramid_channels=64, decoder_segmentation_channels=32)
        elif arch == "DeepLabV3Plus":
            kwargs.update(decoder_channels=64, encoder_output_stride=16)
        return ModelSpec(arch, self.encoder, n, kwargs)


DEFAULT_RUNS = (
    *(
        Run(s, s, ("strategies", "checkpoints", *(("multi-target",) if s == "minent" else ())),
            fractions=FRACTIONS)
        for s in STRATEGY_RUNS
    ),
    *(
        Run(FAMILIES["independent"].format(s), s, ("independent", "checkpoints"),
            seed=11 + k, init="encoder", fractions=FRACTIONS)
        for k, s in enumerate(STRATEGY_RUNS)
    ),
    Run("synthia16-minent", "minent", ("other-classes",), source="synthetic-16",
        classes="synthia-16", seed=21, init="encoder"),
    Run("fpn-minent", "minent", ("other-decoders",), arch="FPN", seed=22, init="encoder",
        steps_factor=2.0),
    Run("deeplabv3plus-minent", "minent", ("other-decoders",), arch="DeepLabV3Plus", seed=23,
        init="encoder", steps_factor=2.0),
    Run("minent-foggy", "minent", ("multi-target",), targets=("foggy",)),
    Run("minent-night", "minent", ("multi-target",), targets=("night",)),
    Run("minent-union", "minent", ("multi-target",), targets=TARGET_DOMAINS),
    Run("minent-seed1", "minent", ("seeds",), seed=1),
    Run("panoptic-minent", "minent", ("panoptic",), source="synthetic-16", classes="synthia-16",
        arch="PanopticUnet", seed=31, init="encoder", steps_factor=2.0),
)  # fmt: skip
BASE = Run("base", "source_only", (), targets=())


def run_fingerprint(run: Run, config: ZooConfig) -> str:
    """What a checkpoint was trained with; a change means it is retrained (and re-evaluated).

    Seed 0 leaves the seed out, so zoos built before there were seeds keep their fingerprints.
    """
    settings = asdict(replace(config, runs=()))
    if not settings["seed"]:
        del settings["seed"]
    record = {"run": asdict(run), "config": settings, "recipe": RECIPE}
    text = json.dumps(record, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
