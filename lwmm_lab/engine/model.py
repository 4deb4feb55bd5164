"""Models: rebuild an ``nn.Module`` from a checkpoint, and put merged weights into one.

A merged model is the anchor's architecture with merged weights, so it is built from the
anchor's spec. Re-merging writes into the same module's tensors: the widgets' fast path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lwmm_lab.engine.checkpoints import (
    Checkpoint,
    check_compatible,
    check_submodel,
    load_checkpoint,
)
from lwmm_lab.engine.merge import MergeConfig, make_plan
from lwmm_lab.engine.pool import Pool, check_pool, resolve_device
from lwmm_lab.engine.spec import ModelSpec
from lwmm_lab.engine.target import lay_out
from lwmm_lab.errors import LwmmError, naming


def load_model(
    source: Checkpoint | str | os.PathLike,
    device: str | torch.device = "auto",
    submodel: str | None = None,
) -> nn.Module:
    """The checkpoint's model with its weights, in eval mode, on ``device``."""
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source, submodel)
    check_submodel([ckpt], submodel)
    spec = require_spec(ckpt)
    with naming(str(ckpt.path or ckpt.label)):
        model = spec.build(resolve_device(device), init=False)
    load_weights(model, ckpt.tensors, str(ckpt.path or ckpt.label))
    return model


def merged_model(
    pool: Pool, config: MergeConfig | None = None, model: nn.Module | None = None, **changes: Any
) -> nn.Module:
    """The merge as a model: built from the anchor's spec, or ``model`` re-filled in place."""
    plan = make_plan(pool, config, **changes)
    if model is None:
        model = merge_target(pool, plan.anchor)
    plan.run(into=model)
    return model.eval()


def merge_target(pool: Pool, anchor: int) -> nn.Module:
    """The module merges with this anchor are written into: the anchor's architecture on the
    pool's device, left unfilled (a merge writes every entry of its state dict), its tensors
    laid out in the pool's column order (:func:`~lwmm_lab.engine.target.lay_out`) so that a
    merge writes whole rows into it."""
    ckpt = pool.checkpoints[check_pool(pool).anchor_index(anchor)]
    spec = require_spec(ckpt)
    with naming(str(ckpt.path or ckpt.label)):
        # Laid out from the meta device, the memory is allocated once, already in place.
        model = lay_out(spec.build("meta", init=False), pool, anchor)
        if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
            model = lay_out(spec.build(pool.device, init=False), pool, anchor)
    return model


def require_spec(ckpt: Checkpoint) -> ModelSpec:
    """The checkpoint's model spec, or an error saying why the model cannot be rebuilt."""
    if ckpt.spec is None:
        raise LwmmError(
            f"{ckpt.path or ckpt.label}: no model spec (smp arch, encoder, classes) in this "
            "checkpoint, so its model cannot be rebuilt; write a copy that carries one with "
            "lwmm convert CKPT --spec JSON -o OUT.safetensors (convert_checkpoint; notebook 07)"
        )
    return ckpt.spec


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatch."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_compatible(expected, tensors, source, hint=" for its model spec")
    model.load_state_dict(tensors, strict=True)
