"""Alignment before merging: weight matching (Git Re-Basin, Ainsworth et al., ICLR 2023).

Two decoders trained from different initialisations can compute the same function with their
hidden channels in another order. Averaging them then averages unrelated channels, which is
why merging independently trained decoders collapses. Weight matching permutes a model's
hidden channels, layer by layer, to best match the anchor's: for one channel group at a time,
the permutation that maximises the summed inner products between the anchor's weights and the
model's, over every tensor that group touches (its conv, its BatchNorm, the next conv's input
channels), is a linear assignment problem (``scipy.optimize.linear_sum_assignment``). Going
round the groups until no permutation changes (coordinate descent) gives the alignment.
Permuting hidden channels never changes what a model computes.

What is permuted. The smp Unet decoder's hidden channels: each block's two conv outputs with
their BatchNorm, through the concatenation with the skip connection (whose encoder channels
stay where they are) and into every head that reads the decoder's output: the segmentation
head, and a :class:`~lwmm_lab.engine.panoptic.PanopticUnet`'s centre and offset heads. The
encoder is not permuted: lwmm assumes, as the paper does (Sec. 3.1), that merged models share
their pre-trained encoder, whose channels are then already aligned. The cost uses the
parameters (conv weights and biases, the BatchNorm affine parameters), as the reference
implementation does; BN running statistics are permuted with their channels but do not vote.

We evaluated the ``rebasin`` package (0.0.47, on PyPI) first: it traces the model with
torchview, also permutes the timm encoder, and on the zoo's 1.4M-parameter Unet it was killed
for memory (24 GB) inside its first iteration. Hence this module, for the smp Unet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lwmm_lab.errors import LwmmError

_HEAD = "segmentation_head.0.weight"
#: The first convs of a PanopticUnet's instance heads, which read the decoder's output too.
_INSTANCE_HEADS = ("center_head.0.weight", "offset_head.0.weight")
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")
#: Tensors that are permuted with their channels but do not enter the matching cost.
_STATISTICS = ("running_mean", "running_var")


@dataclass(frozen=True)
class Axis:
    """Channels ``start .. start + size`` of ``tensor`` along ``axis`` belong to a group.
    An ``optional`` tensor is one only some models have (a panoptic model's instance heads):
    permuted where it is, and voting where both models have it."""

    tensor: str
    axis: int
    start: int = 0
    optional: bool = False


@dataclass(frozen=True)
class ChannelGroup:
    """The output channels of one conv layer and every tensor axis they run along."""

    name: str
    size: int
    axes: tuple[Axis, ...]


def unet_channel_groups(tensors: Mapping[str, Tensor], label: str = "anchor") -> list[ChannelGroup]:
    """The permutable channel groups of an smp Unet decoder, from its tensors' names and shapes.

    Two groups per decoder block (``conv1`` and ``conv2`` outputs). Raises :class:`LwmmError`
    naming the first decoder tensor no group covers (attention, a centre block: not supported).
    """
    blocks = sorted({int(n.split(".")[2]) for n in tensors if n.startswith("decoder.blocks.")})
    convs = [f"decoder.blocks.{b}.{c}" for b in blocks for c in ("conv1", "conv2")]
    if not convs or any(f"{c}.0.weight" not in tensors for c in convs):
        raise LwmmError(
            f"{label}: decoder alignment needs an smp Unet decoder (decoder.blocks.N.conv1 "
            "and conv2); this model has none"
        )
    groups = []
    for k, conv in enumerate(convs):
        weight = tensors[f"{conv}.0.weight"]
        size = weight.shape[0]
        axes = [Axis(f"{conv}.0.weight", 0)]
        axes += [Axis(f"{conv}.0.bias", 0)] if f"{conv}.0.bias" in tensors else []
        axes += [
            Axis(f"{conv}.1.{leaf}", 0) for leaf in _NORM_TENSORS if f"{conv}.1.{leaf}" in tensors
        ]
        consumer = f"{convs[k + 1]}.0.weight" if k + 1 < len(convs) else _HEAD
        if consumer not in tensors or tensors[consumer].shape[1] < size:
            raise LwmmError(
                f"{label}: layer '{consumer}' does not take the {size} channels of {conv}"
            )
        axes.append(Axis(consumer, 1))
        if consumer == _HEAD:
            axes += [Axis(head, 1, optional=True) for head in _INSTANCE_HEADS]
        groups.append(ChannelGroup(conv, size, tuple(axes)))
    stray = _uncovered(groups, tensors)
    if stray is not None:
        raise LwmmError(
            f"{label}: cannot align layer '{stray}': decoder alignment supports smp Unet decoders "
            "without attention or a centre block"
        )
    return groups


def check_matchable(groups: list[ChannelGroup], tensors: Mapping[str, Tensor], label: str) -> None:
    """Raise one line naming the first layer of ``tensors`` that cannot follow ``groups``.

    A layer that produces a group's channels must have exactly as many; one that takes them
    (the next conv, the head) at least as many inputs.
    """
    for g in groups:
        for a in g.axes:
            t = tensors.get(a.tensor)
            if t is None and a.optional:
                continue
            fits = t is not None and t.dim() > a.axis
            if fits and a.axis == 0:
                fits = t.shape[0] == g.size
            elif fits:
                fits = t.shape[a.axis] >= a.start + g.size
            if not fits:
                problem = "has no" if t is None else f"has another shape {list(t.shape)} for"
                raise LwmmError(
                    f"{label} {problem} layer '{a.tensor}', so its channels cannot be matched to "
                    "the anchor's; decoder alignment needs models with the anchor's Unet decoder"
                )
    stray = _uncovered(groups, tensors)
    if stray is not None:
        raise LwmmError(
            f"{label}: layer '{stray}' is not in the anchor's decoder, so its channels "
            "cannot be matched; decoder alignment needs models with the anchor's Unet decoder"
        )


def permute(
    tensors: Mapping[str, Tensor],
    groups: list[ChannelGroup],
    perms: Mapping[str, Tensor],
    skip: str | None = None,
) -> dict[str, Tensor]:
    """``tensors`` with every group's channels reordered: new channel k is old ``perm[k]``.

    ``skip`` leaves one group as it is (the group being matched). Tensors not named by a group
    are returned unchanged (the same objects).
    """
    out = dict(tensors)
    for g in groups:
        if g.name == skip:
            continue
        for a in g.axes:
            if a.tensor in out:
                out[a.tensor] = _reorder(out[a.tensor], a, perms[g.name])
    return out


def match_channels(
    reference: Mapping[str, Tensor],
    other: Mapping[str, Tensor],
    groups: list[ChannelGroup],
    max_rounds: int = 100,
    seed: int = 0,
) -> tuple[dict[str, Tensor], int]:
    """Weight matching: per group, the permutation of ``other``'s channels that best matches
    ``reference``'s. Returns the permutations and the number of rounds taken.

    Each round visits the groups in a seeded random order and solves one linear assignment per
    group with the others' current permutations applied; it stops after a round that changes
    nothing (the objective only increases, so it always stops). scipy is imported here, so
    that a pool nobody aligns (``lwmm merge`` without ``--align``) does not wait for it.
    """
    from scipy.optimize import linear_sum_assignment

    perms = {g.name: torch.arange(g.size) for g in groups}
    order = torch.Generator().manual_seed(seed)
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (the count is returned)
        changed = False
        for k in torch.randperm(len(groups), generator=order).tolist():
            g = groups[k]
            votes = [a for a in g.axes if _votes(a, reference, other)]
            permuted = permute({a.tensor: other[a.tensor] for a in votes}, groups, perms, g.name)
            cost = torch.zeros(g.size, g.size, dtype=torch.float64)
            for a in votes:
                ref = _rows(reference[a.tensor], a, g.size)
                cost += ref @ _rows(permuted[a.tensor], a, g.size).T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.from_numpy(cols.astype(np.int64))
            rows = torch.arange(g.size)
            gain = float(cost[rows, new].sum() - cost[rows, perms[g.name]].sum())
            if gain > 1e-9 * max(float(cost.abs().max()), 1e-30):
                perms[g.name], changed = new, True
        if not changed:
            break
    return perms, rounds


@dataclass(frozen=True)
class Alignment:
    """How a pool's models were aligned to its anchor: the channel groups, and for each model
    its permutations and the rounds of weight matching they took (the anchor's are identities).
    """

    anchor: int
    groups: tuple[ChannelGroup, ...]
    perms: tuple[dict[str, Tensor], ...]
    rounds: tuple[int, ...]

    @property
    def channels(self) -> int:
        """How many decoder channels take part (the sum of the groups' sizes)."""
        return sum(g.size for g in self.groups)

    @property
    def moved(self) -> tuple[int, ...]:
        """Per model, how many decoder channels are not where they were."""
        return tuple(
            sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
            for perms in self.perms
        )

    def apply(self, model: int, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``tensors`` keyed like model ``model``'s (a Fisher estimate), permuted like it."""
        return permute(tensors, list(self.groups), self.perms[model])

    def record(self, labels: list[str]) -> dict[str, Any]:
        """What the merged file's provenance says about the alignment."""
        return {
            "method": "weight-matching",
            "anchor": labels[self.anchor],
            "groups": [g.name for g in self.groups],
            "channels": self.channels,
            "models": {
                label: {"rounds": r, "moved_channels": m}
                for label, r, m in zip(labels, self.rounds, self.moved, strict=True)
            },
        }


def _votes(a: Axis, reference: Mapping[str, Tensor], other: Mapping[str, Tensor]) -> bool:
    """Whether ``a``'s tensor enters its group's matching cost: not a BN statistic, in both
    models and of one shape there (another head, with its own class count, is permuted but
    does not vote; an instance head votes only between two panoptic models)."""
    if a.tensor.rpartition(".")[2] in _STATISTICS or a.tensor not in reference:
        return False
    return a.tensor in other and reference[a.tensor].shape == other[a.tensor].shape


def _uncovered(groups: list[ChannelGroup], tensors: Mapping[str, Tensor]) -> str | None:
    """The first floating decoder tensor that no group's axes name, if any."""
    covered = {a.tensor for g in groups for a in g.axes}
    for name, t in tensors.items():
        if name.startswith("decoder.") and t.is_floating_point() and name not in covered:
            return name
    return None


def _reorder(t: Tensor, a: Axis, perm: Tensor) -> Tensor:
    index = torch.arange(t.shape[a.axis])
    index[a.start : a.start + len(perm)] = a.start + perm
    return t.index_select(a.axis, index.to(t.device))


def _rows(t: Tensor, a: Axis, size: int) -> Tensor:
    """The group's channels of ``t`` as rows: (size, everything else), in float64 on the CPU."""
    part = t.narrow(a.axis, a.start, size).movedim(a.axis, 0)
    return part.reshape(size, -1).to("cpu", torch.float64)
