"""The model zoo, trained here from the synthetic domains: its recipe, the UDA training loop,
the build, the manifest, and Fisher estimates.

The names below are what notebooks and scripts use: ``from lwmm_lab.zoo import find_zoo``.
They are imported when first asked for, so that reading the recipe or the manifest
(``lwmm zoo list``) does not load the training loop with torch and smp behind it.
"""

from __future__ import annotations

from lwmm_lab.lazy import lazy_names

_HOMES = {
    "build_zoo": "lwmm_lab.zoo.build",
    "MANIFEST": "lwmm_lab.zoo.manifest",
    "PRESETS": "lwmm_lab.zoo.manifest",
    "base_checkpoint": "lwmm_lab.zoo.manifest",
    "default_zoo_dir": "lwmm_lab.zoo.manifest",
    "find_zoo": "lwmm_lab.zoo.manifest",
    "load_manifest": "lwmm_lab.zoo.manifest",
    "preset": "lwmm_lab.zoo.manifest",
    "select": "lwmm_lab.zoo.manifest",
    "BASE": "lwmm_lab.zoo.recipe",
    "DEFAULT_RUNS": "lwmm_lab.zoo.recipe",
    "Run": "lwmm_lab.zoo.recipe",
    "ZooConfig": "lwmm_lab.zoo.recipe",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
