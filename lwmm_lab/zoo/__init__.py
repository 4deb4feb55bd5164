"""The model zoo, trained here from the synthetic domains: its recipe, the UDA training loop,
the build, the manifest, and Fisher estimates.

The names below are what notebooks and scripts use: ``from lwmm_lab.zoo import find_zoo``.
"""

from lwmm_lab.zoo.build import build_zoo
from lwmm_lab.zoo.manifest import (
    MANIFEST,
    PRESETS,
    base_checkpoint,
    default_zoo_dir,
    find_zoo,
    load_manifest,
    preset,
    select,
)
from lwmm_lab.zoo.recipe import BASE, DEFAULT_RUNS, Run, ZooConfig

__all__ = [
    "BASE",
    "DEFAULT_RUNS",
    "MANIFEST",
    "PRESETS",
    "Run",
    "ZooConfig",
    "base_checkpoint",
    "build_zoo",
    "default_zoo_dir",
    "find_zoo",
    "load_manifest",
    "preset",
    "select",
]
