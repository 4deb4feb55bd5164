"""The model spec: enough to rebuild a checkpoint's ``nn.Module`` from the file alone.

lwmm_lab stores it in the metadata of every safetensors file it writes. It also gives the
model's ``state_dict`` key order, which the layer-wise schedule's depth index depends on.
A spec is data: torch and smp are imported when a model is built, so that reading the zoo's
recipe (``lwmm zoo list``) does not wait seconds for them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from lwmm_lab.errors import LwmmError, check_count, naming

if TYPE_CHECKING:
    import torch
    from torch import nn

_SMP_CONFIG_KEYS = ("_model_class", "encoder_name", "encoder_weights", "classes")


@dataclass(frozen=True)
class ModelSpec:
    """An smp model: architecture class name, encoder name, number of classes, other kwargs.

    ``arch`` is an smp architecture, or one of lwmm's own (``PanopticUnet``, an smp Unet with
    instance heads: :mod:`lwmm_lab.engine.panoptic`).

    Models are always built with ``encoder_weights=None``: nothing is downloaded, the weights
    come from the checkpoint.
    """

    arch: str
    encoder: str
    classes: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse what describes no model, by name: a class count of ``"5"`` failed inside
        smp's string formatting, 0 classes built a model that predicts nothing, kwargs of
        None failed in ``dict.update`` and ones that are not JSON data when the spec was
        written into a file."""
        with naming("model spec"):
            for name in ("arch", "encoder"):
                if not isinstance(getattr(self, name), str):
                    raise LwmmError(f"{name}={getattr(self, name)!r} is not a name")
            object.__setattr__(self, "classes", check_count("classes", self.classes))
            if not isinstance(self.kwargs, dict):
                raise LwmmError(f"kwargs={self.kwargs!r}: give a dict of smp arguments")
            try:
                json.dumps(self.kwargs)
            except (TypeError, ValueError) as e:
                raise LwmmError(
                    f"kwargs: not JSON data, which a file's metadata holds ({e})"
                ) from None

    def build(self, device: str | torch.device | None = None, *, init: bool = True) -> nn.Module:
        """A freshly initialised model of this spec, in eval mode, in ``channels_last`` layout.

        ``channels_last`` makes convolutions 1.5-2.5x faster on CPUs (oneDNN) and is neutral or
        better on GPUs; values, names and shapes of the state dict do not change.

        ``init=False`` allocates the tensors without filling them: for a model whose every
        state-dict entry is written next (a checkpoint's weights, a merge). It copies a model
        built once per spec on the meta device, which skips the random initialisation that
        is most of building one (24 against 70 ms for the zoo's Unet on the 2-core CPU). A
        model with buffers outside its state dict, which no load would fill, is initialised.
        """
        import segmentation_models_pytorch as smp
        import torch

        from lwmm_lab.engine.panoptic import ARCHS

        if not init:
            template = _empty_template(self.to_json())
            if template is not None:
                return copy.deepcopy(template).to_empty(device=device or "cpu")
        try:
            with torch.device(device or "cpu"):
                create = ARCHS.get(self.arch)
                kwargs = {"encoder_name": self.encoder, "encoder_weights": None}
                kwargs.update(classes=self.classes, **self.kwargs)
                model = create(**kwargs) if create else smp.create_model(self.arch, **kwargs)
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, AssertionError) as e:
            # timm: "Unknown model"; smp 0.6 fails with an AttributeError on a norm it cannot
            # initialise (decoder_use_norm="instancenorm", which has no affine weight)
            raise LwmmError(f"model spec {self.to_json()} cannot be built: {e}") from None
        return model.to(memory_format=torch.channels_last).eval()

    def key_order(self) -> list[str]:
        """The model's ``state_dict`` keys in order (built on the meta device: no memory)."""
        return list(_key_order(self.to_json()))

    def meta_state(self) -> dict[str, torch.Tensor]:
        """The model's ``state_dict`` on the meta device: names, shapes and dtypes, no memory."""
        return _meta_model(self.to_json()).state_dict()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def __str__(self) -> str:
        """``Unet(resnet50, 19 classes, decoder_channels=[...])``: how messages name a spec."""
        extra = "".join(f", {k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{self.arch}({self.encoder}, {self.classes} classes{extra})"

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> ModelSpec:
        """Parse :meth:`to_json` output; ``source`` names the file in the error message."""
        try:
            d = json.loads(text)
            with naming(source):
                return cls(d["arch"], d["encoder"], int(d["classes"]), dict(d.get("kwargs") or {}))
        except (ValueError, KeyError, TypeError) as e:
            why = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise LwmmError(
                f"{source}: malformed model spec ({why}); a spec is JSON with arch, encoder, "
                "classes and kwargs"
            ) from None

    @classmethod
    def from_smp_config(cls, config: dict[str, Any], source: str = "config.json") -> ModelSpec:
        """The spec of a directory written by smp's ``save_pretrained`` (its config.json)."""
        missing = [k for k in ("_model_class", "encoder_name", "classes") if k not in config]
        if missing:
            raise LwmmError(f"{source}: not an smp config (missing {', '.join(missing)})")
        kwargs = {k: v for k, v in config.items() if k not in _SMP_CONFIG_KEYS}
        with naming(source):
            return cls(config["_model_class"], config["encoder_name"], config["classes"], kwargs)


@lru_cache(maxsize=32)
def _meta_model(spec_json: str) -> nn.Module:
    """The spec's model on the meta device: shapes and names, no memory and no values."""
    return ModelSpec.from_json(spec_json).build("meta")


@lru_cache(maxsize=32)
def _key_order(spec_json: str) -> tuple[str, ...]:
    return tuple(_meta_model(spec_json).state_dict())


@lru_cache(maxsize=32)
def _empty_template(spec_json: str) -> nn.Module | None:
    """The meta model to copy for ``build(init=False)``; None when a buffer is not in the
    state dict (non-persistent), as a load would leave it unfilled."""
    model = _meta_model(spec_json)
    buffers = {name for name, _ in model.named_buffers()}
    return model if buffers <= set(_key_order(spec_json)) else None
