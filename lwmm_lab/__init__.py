"""lwmm-lab: an interactive lab for Layer-wise Model Merging of segmentation models.

The flow is one-directional: checkpoints -> pool -> merge -> model -> evaluation -> figures
-> widgets. The names below are the public Python API of the lower layers. They are imported
when first asked for, so that importing a subpackage (``lwmm_lab.data``, say) loads that layer
and what it uses, not the merge engine with smp and scipy behind it.
"""

from __future__ import annotations

from lwmm_lab._version import __version__ as __version__
from lwmm_lab.lazy import lazy_names

_HOMES = {
    "Checkpoint": "lwmm_lab.engine.checkpoints",
    "convert_checkpoint": "lwmm_lab.engine.checkpoints",
    "load_checkpoint": "lwmm_lab.engine.checkpoints",
    "save_checkpoint": "lwmm_lab.engine.checkpoints",
    "MergeConfig": "lwmm_lab.engine.merge",
    "MergePlan": "lwmm_lab.engine.merge",
    "make_plan": "lwmm_lab.engine.merge",
    "merge": "lwmm_lab.engine.merge",
    "save_merge": "lwmm_lab.engine.merge",
    "BN_RULES": "lwmm_lab.engine.methods",
    "METHODS": "lwmm_lab.engine.methods",
    "SCHEDULES": "lwmm_lab.engine.methods",
    "layerwise_weights": "lwmm_lab.engine.methods",
    "load_model": "lwmm_lab.engine.model",
    "merged_model": "lwmm_lab.engine.model",
    "Pool": "lwmm_lab.engine.pool",
    "ModelSpec": "lwmm_lab.engine.spec",
    "DepthOrderWarning": "lwmm_lab.errors",
    "LwmmError": "lwmm_lab.errors",
}

__all__ = sorted([*_HOMES, "__version__"])
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
