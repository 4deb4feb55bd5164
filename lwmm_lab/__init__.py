"""lwmm-lab: an interactive lab for Layer-wise Model Merging of segmentation models.

The flow is one-directional: checkpoints -> pool -> merge -> model -> evaluation -> figures
-> widgets. The names below are the public Python API of the lower layers.
"""

from lwmm_lab._version import __version__
from lwmm_lab.engine.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from lwmm_lab.engine.merge import MergeConfig, MergePlan, make_plan, merge, save_merge
from lwmm_lab.engine.methods import BN_RULES, METHODS, SCHEDULES, layerwise_weights
from lwmm_lab.engine.model import load_model, merged_model
from lwmm_lab.engine.pool import Pool
from lwmm_lab.engine.spec import ModelSpec
from lwmm_lab.errors import DepthOrderWarning, LwmmError

__all__ = [
    "BN_RULES",
    "METHODS",
    "SCHEDULES",
    "Checkpoint",
    "DepthOrderWarning",
    "LwmmError",
    "MergeConfig",
    "MergePlan",
    "ModelSpec",
    "Pool",
    "__version__",
    "layerwise_weights",
    "load_checkpoint",
    "load_model",
    "make_plan",
    "merge",
    "merged_model",
    "save_checkpoint",
    "save_merge",
]
