"""A panoptic model that merges with the zoo's semantic Unets: a Unet with Panoptic-DeepLab heads.

``PanopticUnet`` is an smp ``Unet`` (encoder, decoder, semantic head, with the Unet's own
state-dict names) plus two instance heads on the decoder's output, in the style of
Panoptic-DeepLab: a class-agnostic ``center_head`` (one heatmap channel, 1 at instance centres)
and an ``offset_head`` (two channels: the (dy, dx) from each pixel to its instance's centre, in
pixels). Because the names and shapes of the encoder, the decoder and (for the same classes) the
semantic head are a semantic Unet's, a pool of semantic and panoptic checkpoints shares them by
name and shape, and the instance heads are the anchor's alone: the paper's cross-task merge
(Table 6). Its ``forward`` returns the semantic logits, so everything that scores semantic
models scores it too; :meth:`PanopticUnet.forward_panoptic` returns all three outputs.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
from torch import Tensor, nn

#: Width of the instance heads' hidden layer.
HEAD_CHANNELS = 32


def _head(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, HEAD_CHANNELS, 3, padding=1, bias=False),
        nn.BatchNorm2d(HEAD_CHANNELS),
        nn.ReLU(inplace=True),
        nn.Conv2d(HEAD_CHANNELS, out_channels, 1),
    )


class PanopticUnet(smp.Unet):
    """An smp Unet with a centre heatmap head and a centre-offset head on its decoder output."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        width = self.segmentation_head[0].in_channels
        self.center_head = _head(width, 1)
        self.offset_head = _head(width, 2)

    def forward_panoptic(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Semantic logits (N, C, H, W), centre heatmap (N, 1, H, W), offsets (N, 2, H, W)."""
        features = self.decoder(self.encoder(x))
        return (
            self.segmentation_head(features),
            self.center_head(features),
            self.offset_head(features),
        )


#: Architectures lwmm builds itself (``ModelSpec.arch``), besides smp's.
ARCHS: dict[str, type[nn.Module]] = {"PanopticUnet": PanopticUnet}


def is_panoptic(model: nn.Module) -> bool:
    """Whether ``model`` has instance heads (a :class:`PanopticUnet`)."""
    return callable(getattr(model, "forward_panoptic", None))
