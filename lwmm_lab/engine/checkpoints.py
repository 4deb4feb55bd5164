"""Checkpoints in and out: safetensors, weights-only pickles, mmseg/DAFormer layouts, smp dirs.

Every file lwmm_lab writes is safetensors with metadata: the model spec (so the ``nn.Module``
can be rebuilt from the file alone), the ``state_dict`` key order (safetensors sorts keys, and
the layer-wise schedule depends on depth order) and, for merges, their provenance.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.serialization import DEFAULT_PROTOCOL

from lwmm_lab._version import __version__
from lwmm_lab.engine.spec import ModelSpec
from lwmm_lab.errors import DepthOrderWarning, LwmmError, check_image_size, first_line, naming
from lwmm_lab.files import atomic_path, output_path, refuse_overwrite, sha256, stand_in

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: Sub-models of an mmseg/DAFormer checkpoint: student, EMA teacher, ImageNet feature model.
SUBMODELS = ("model", "ema_model", "imnet_model")
#: Keys under which training scripts nest the state dict.
NESTED_KEYS = ("state_dict", "model", "model_state_dict")

#: The (height, width) a checkpoint is evaluated at when its provenance records none: the lab's
#: default image size.
DEFAULT_RESOLUTION = (128, 256)
#: The largest header the safetensors format allows (its reader's limit).
_MAX_HEADER_BYTES = 100_000_000

_META_ORDER, _META_SPEC, _META_PROVENANCE = "lwmm.order", "lwmm.spec", "lwmm.provenance"
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One model's tensors, in its ``state_dict`` order when ``order_known``.

    ``spec`` rebuilds the model when known; ``provenance`` is what lwmm_lab recorded when it
    wrote the file (a merge's inputs and settings). Tensors on the ``meta`` device carry only
    shapes and dtypes (see :func:`peek_checkpoint`). ``submodel`` says which sub-model of an
    mmseg/DAFormer file the tensors are (None for a file that has no sub-models).
    """

    tensors: Mapping[str, torch.Tensor]
    path: Path | None = None
    spec: ModelSpec | None = None
    order_known: bool = True
    provenance: Mapping[str, Any] = field(default_factory=dict)
    submodel: str | None = None

    def __post_init__(self) -> None:
        """Refuse what is no checkpoint where it is made, by name (a list for a tensor, None
        for the tensors or a string for the spec failed later, deep inside a merge); a path
        given as a string becomes a :class:`Path`."""
        if self.path is not None:
            if not isinstance(self.path, str | os.PathLike):
                raise LwmmError(f"Checkpoint: path={self.path!r} is not a path")
            object.__setattr__(self, "path", Path(self.path))
        check_tensors(self.tensors, str(self.path or "Checkpoint"))
        if self.spec is not None and not isinstance(self.spec, ModelSpec):
            raise LwmmError(
                f"{self.path or 'Checkpoint'}: spec={self.spec!r} is not a ModelSpec "
                "(ModelSpec(arch, encoder, classes, kwargs))"
            )

    @property
    def label(self) -> str:
        """A short name for tables: ``run@step`` for zoo checkpoints, else the file's stem."""
        zoo = self.zoo
        if "run" in zoo and "step" in zoo:
            return f"{zoo['run']}@{zoo['step']}"
        if self.path is None:
            return "model"
        return self.path.stem if self.path.suffix else self.path.name

    @property
    def zoo(self) -> Mapping[str, Any]:
        """What the zoo recorded of the run that wrote the file (run, step, fingerprint); empty
        for a file the zoo did not write."""
        zoo = self.provenance.get("zoo") if isinstance(self.provenance, Mapping) else None
        return zoo if isinstance(zoo, Mapping) else {}

    @property
    def resolution(self) -> tuple[int, int]:
        """The (height, width) the model was trained at, as the file records it (the zoo's
        checkpoints and lwmm's merges of them do); :data:`DEFAULT_RESOLUTION` for a file that
        records none."""
        return self.recorded_resolution or DEFAULT_RESOLUTION

    @property
    def recorded_resolution(self) -> tuple[int, int] | None:
        """The resolution the file records, or None. A malformed record is refused naming
        the file, where it would fail later as an image size from nowhere."""
        value = self.provenance.get("resolution") if isinstance(self.provenance, Mapping) else None
        if value is None:
            return None
        with naming(f"{self.path or 'checkpoint'}: metadata '{_META_PROVENANCE}' resolution"):
            return check_image_size(value)

    def with_tensors(self, tensors: Mapping[str, torch.Tensor]) -> Checkpoint:
        return replace(self, tensors=tensors)

    def with_spec(self, spec: ModelSpec) -> Checkpoint:
        """The same checkpoint with a model spec, for foreign files that do not carry one, its
        tensors in the model's order (a foreign safetensors file's are sorted by name). A spec
        whose model the tensors do not fit is refused here, naming the first key that
        differs, rather than when a model is first built from it."""
        replace(self, spec=spec)  # refuses what is not a ModelSpec, by name
        shapes = {k: v.shape for k, v in spec.meta_state().items()}
        check_compatible(shapes, self.tensors, str(self.path or self.label), f" for {spec}")
        tensors = {k: self.tensors[k] for k in shapes}
        return replace(self, tensors=tensors, spec=spec, order_known=True)


def load_checkpoint(
    path: str | os.PathLike, submodel: str | None = None, check_finite: bool = True
) -> Checkpoint:
    """Read a checkpoint file or smp ``save_pretrained`` directory onto the CPU.

    Pickles (``.pt/.pth/.bin``, and Lightning's ``.ckpt``) are read only with
    ``torch.load(weights_only=True)``; one that needs code is refused. Nested
    ``{'state_dict': ...}`` / ``{'model': ...}`` layouts are unwrapped, ``module.`` prefixes
    stripped, and for mmseg/DAFormer files (or a Lightning module's ``model.`` attribute)
    ``submodel`` picks ``model`` (the student, the default), ``ema_model`` or ``imnet_model``;
    a file without sub-models is read whole (:func:`check_submodel` refuses a choice that
    applies to none of a command's files). A floating tensor with NaN or Inf is refused,
    naming it.
    """
    ckpt = _read(_file(path), submodel, meta=False)
    if check_finite:
        for name, t in ckpt.tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise LwmmError(f"{path}: tensor '{name}' contains NaN or Inf; refusing to use it")
    return ckpt


def peek_checkpoint(path: str | os.PathLike, submodel: str | None = None) -> Checkpoint:
    """Like :func:`load_checkpoint` but with ``meta`` tensors: names, shapes, dtypes, order.

    For safetensors only the header is read, so a pool can plan its memory before loading.
    """
    return _read(_file(path), submodel, meta=True)


def convert_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    spec: ModelSpec | None = None,
    submodel: str | None = None,
    resolution: tuple[int, int] | None = None,
) -> Path:
    """Rewrite a checkpoint of any format :func:`load_checkpoint` reads as lwmm safetensors
    that carry the model spec, so that every command and panel can rebuild its model.

    ``spec`` is given for a file that carries none (a ``torch.save`` of a state dict); a file
    that carries one keeps it, and a different ``spec`` is refused. ``resolution`` records
    the (height, width) the model was trained at: what the lab's previews, sweeps and
    evaluation on a synthetic domain score at by default. The source is read only; the output
    is written atomically and never over the source.
    """
    output = checkpoint_path(output)
    refuse_overwrite(output, (Path(source),))
    size = None if resolution is None else list(check_image_size(resolution))
    with warnings.catch_warnings():  # a file's unknown key order: the spec gives it
        if spec is not None:
            warnings.simplefilter("ignore", DepthOrderWarning)
        ckpt = load_checkpoint(source, submodel)
    check_submodel([ckpt], submodel)
    if spec is None and ckpt.spec is None:
        raise LwmmError(f"{source}: carries no model spec; give the spec of its model")
    if spec is not None and ckpt.spec is not None and spec != ckpt.spec:
        raise LwmmError(f"{source}: carries its own spec {ckpt.spec}, not {spec}")
    ckpt = ckpt.with_spec(spec or ckpt.spec)
    provenance = dict(ckpt.provenance)
    provenance["converted_from"] = file_record(ckpt.path, submodel=ckpt.submodel)
    if size is not None:
        provenance["resolution"] = size
    return save_checkpoint(output, ckpt.tensors, ckpt.spec, provenance, protect=(Path(source),))


def file_record(
    path: Path | None, label: str | None = None, submodel: str | None = None
) -> dict[str, Any]:
    """What provenance records of an input file: its path, its sha256 (of the weights file of
    an smp directory), and the label and sub-model it was read as."""
    record: dict[str, Any] = {"path": None if path is None else str(path), "sha256": None}
    if label is not None:
        record["label"] = label
    if submodel is not None:
        record["submodel"] = submodel
    if path is not None:
        file = path / "model.safetensors" if path.is_dir() else path
        if file.is_file():
            record["sha256"] = sha256(file)
    return record


def checkpoint_path(path: str | os.PathLike, what: str = "a checkpoint") -> Path:
    """``path`` when :func:`save_checkpoint` can write it (``.safetensors``); commands check it
    up front, before the work that fills it."""
    return output_path(path, what, ".safetensors")


def save_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    spec: ModelSpec | None = None,
    provenance: Mapping[str, Any] | None = None,
    protect: tuple[Path, ...] = (),
) -> Path:
    """Write ``tensors`` (in their order) as safetensors with lwmm_lab metadata, atomically.

    ``protect`` lists input files; writing over one of them is refused.
    """
    path = checkpoint_path(path)
    check_tensors(tensors, str(path))
    metadata = {"format": "pt", "lwmm.version": __version__, _META_ORDER: json.dumps(list(tensors))}
    if spec is not None:
        if not isinstance(spec, ModelSpec):
            raise LwmmError(f"{path}: spec={spec!r} is not a ModelSpec")
        metadata[_META_SPEC] = spec.to_json()
    if provenance:
        try:
            metadata[_META_PROVENANCE] = json.dumps(provenance)
        except (TypeError, ValueError) as e:
            raise LwmmError(f"{path}: provenance is not JSON data ({e})") from None
    data = _unshared({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    with atomic_path(path, protect) as tmp:
        save_file(data, tmp, metadata=metadata)
    return path


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with a copy of each one whose memory overlaps an earlier one's (tied
    weights: safetensors refuses to write shared memory, and a state dict holds both names)."""
    end = -1  # of the memory seen so far, in the order of addresses
    for name in sorted(tensors, key=lambda n: tensors[n].data_ptr()):
        t = tensors[name]
        if t.numel() and t.data_ptr() < end:
            tensors[name] = t.clone()  # new memory, apart from every tensor here
        else:
            end = max(end, t.data_ptr() + t.numel() * t.element_size())
    return tensors


def unique_labels(labels: Sequence[str]) -> list[str]:
    """``labels`` with each repeated one suffixed by its position (``name#2``), so rows,
    menus and legends built from them never merge two models into one."""
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def check_compatible(
    expected: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], what: str, hint: str = ""
) -> None:
    """Raise one line naming the first key of ``tensors`` that is missing, extra or mis-shaped.

    ``expected`` maps names to shapes; ``what`` names the tensors' owner in the message.
    """
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k])]
    for problem, keys in (
        ("lacks", missing),
        ("has unexpected", extra),
        ("has another shape for", wrong),
    ):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise LwmmError(f"{what} {problem} '{keys[0]}'{more}{hint}")


def _file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path`; anything else (None, a state dict) is refused in one line,
    where pathlib's TypeError named no argument."""
    if not isinstance(path, str | os.PathLike):
        raise LwmmError(
            f"a checkpoint is read from a path, not a {type(path).__name__}{state_dict_hint(path)}"
        )
    return Path(path)


def check_tensors(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one line naming ``source`` and the entry when ``tensors`` is not a mapping of
    names to tensors."""
    if not isinstance(tensors, Mapping):
        raise LwmmError(f"{source}: tensors are a {type(tensors).__name__}, not names -> tensors")
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise LwmmError(f"{source}: '{name}' holds a {type(t).__name__}, not a tensor")


def state_dict_hint(value: object) -> str:
    """What to do with a state dict given where a checkpoint file goes."""
    return " (wrap a state dict as Checkpoint(state_dict))" if isinstance(value, Mapping) else ""


def _read(path: Path, submodel: str | None, meta: bool) -> Checkpoint:
    if path.is_dir():
        return _read_smp_dir(path, submodel, meta)
    if not path.exists():
        raise LwmmError(f"{path}: no such file")
    suffix = path.suffix.lower()  # as the writers check it: M.SAFETENSORS reads back
    if suffix == ".safetensors":
        return _read_safetensors(path, submodel, meta)
    if suffix in PICKLE_SUFFIXES:
        tensors, picked = _select_submodel(_read_pickle(path), path, submodel)
        if meta:
            tensors = {k: v.to("meta") for k, v in tensors.items()}
        return Checkpoint(tensors, path, submodel=picked)
    raise LwmmError(
        f"{path}: unknown checkpoint format (expected .safetensors, .pt, .pth, .bin, .ckpt "
        "or a directory written by smp's save_pretrained)"
    )


def _read_smp_dir(path: Path, submodel: str | None, meta: bool) -> Checkpoint:
    config, weights = path / "config.json", path / "model.safetensors"
    if not (config.is_file() and weights.is_file()):
        raise LwmmError(
            f"{path}: not an smp save_pretrained directory "
            "(it needs config.json and model.safetensors)"
        )
    try:
        spec = ModelSpec.from_smp_config(json.loads(config.read_text()), str(config))
    except ValueError as e:
        raise LwmmError(f"{config}: not valid JSON ({e})") from None
    with naming(str(config)):
        spec.key_order()  # a spec smp cannot build is the config's fault (cached for the read)
    ckpt = _read_safetensors(weights, submodel, meta, spec=spec)
    return replace(ckpt, path=path)


def _read_safetensors(
    path: Path, submodel: str | None, meta: bool, spec: ModelSpec | None = None
) -> Checkpoint:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if meta:
                tensors = {k: _meta_tensor(f.get_slice(k), path, k) for k in f.keys()}  # noqa: SIM118
            else:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise LwmmError(
            f"{path}: not a readable safetensors file "
            f"({_what_it_holds(path) or f'corrupt or truncated: {e}'})"
        ) from None
    if _META_SPEC in metadata:
        spec = ModelSpec.from_json(metadata[_META_SPEC], str(path))
    provenance = _json_meta(metadata, _META_PROVENANCE, path, dict) or {}
    order = _json_meta(metadata, _META_ORDER, path, list)
    if order is not None and (unlisted := set(tensors) - {str(k) for k in order}):
        raise LwmmError(
            f"{path}: metadata '{_META_ORDER}' does not list tensor '{min(unlisted)}' (a file "
            "lwmm_lab writes lists every tensor in the model's order)"
        )
    tensors, picked = _select_submodel(tensors, path, submodel)
    if order is None and spec is not None:
        with naming(str(path)):
            order = spec.key_order()
    if order is None:
        if not meta:  # the header-only peek stays quiet: the full load that follows warns
            _warn_unknown_order(path)
        return Checkpoint(dict(sorted(tensors.items())), path, spec, False, provenance, picked)
    ordered = {k: tensors[k] for k in order if k in tensors}
    ordered.update(sorted((k, v) for k, v in tensors.items() if k not in ordered))
    return Checkpoint(ordered, path, spec, True, provenance, picked)


def _warn_unknown_order(path: Path) -> None:
    warnings.warn(
        f"{path}: no stored key order and no model spec; the depth order is unknown "
        "(safetensors keys are sorted, so decoder.* may come before encoder.*)",
        DepthOrderWarning,
        stacklevel=5,
    )


def _read_pickle(path: Path) -> Any:
    """``torch.load(weights_only=True)``, every failure one :class:`LwmmError` line. Torch's
    note on a pickle protocol other than its default is not passed on: the file is read, or
    the error says which protocol its weights-only reader could not follow; nor is its note
    on checking a sparse tensor, which the reader refuses anyway."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            warnings.filterwarnings("ignore", "Validating sparse tensor", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise LwmmError(
                f"{path}: refused: this pickle needs code to load ({found.group(1)}); lwmm_lab "
                "reads pickles only with torch.load(weights_only=True). Re-save it as a plain "
                "state dict or as safetensors"
            ) from None
        unpickler = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        reason = unpickler.group(1).strip() if unpickler else first_line(e)
        protocol = _pickle_protocol(path)
        if protocol is not None and protocol > DEFAULT_PROTOCOL:
            raise LwmmError(
                f"{path}: saved with pickle protocol {protocol}, which torch.load("
                f"weights_only=True) cannot read ({reason}); re-save it with torch.save's "
                "default protocol, or as safetensors"
            ) from None
        raise LwmmError(
            f"{path}: not a readable PyTorch checkpoint ({_what_it_holds(path) or reason})"
        ) from None
    except Exception as e:  # a damaged pickle can fail anywhere in the unpickler
        reason = _what_it_holds(path) or f"corrupt or truncated: {first_line(e)}"
        raise LwmmError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


def _what_it_holds(path: Path) -> str | None:
    """What an unreadable checkpoint file holds instead of weights, when its first bytes say
    (:func:`~lwmm_lab.files.stand_in`), or the other format under the wrong suffix, or a copy
    cut off partway; None when they do not: the file is then damaged weights, and the reader's
    error says how."""
    if found := stand_in(path, "weights"):
        return found
    try:
        with path.open("rb") as file:
            head = file.read(10)
        if path.suffix.lower() != ".safetensors":
            return "it is a safetensors file; name it .safetensors" if head[8:10] == b'{"' else None
        if head.startswith(b"PK\x03\x04"):
            return "it is a torch.save archive; name it .pt"
        return _safetensors_shortfall(path)
    except OSError:  # unreadable: the reader's own error says why
        return None


def _safetensors_shortfall(path: Path) -> str | None:
    """How much of a safetensors file is missing, when it is shorter than its own header says
    (a copy or download cut off partway); None when it is not, or its header is not one."""
    size = path.stat().st_size
    with path.open("rb") as file:
        header_bytes = int.from_bytes(file.read(8), "little")
        if header_bytes > _MAX_HEADER_BYTES:  # not a header length: not safetensors at all
            return None
        if 8 + header_bytes > size:
            return f"truncated: {size} bytes, and its header alone takes {8 + header_bytes}"
        try:
            header = json.loads(file.read(header_bytes))
            ends = [int(e["data_offsets"][1]) for k, e in header.items() if k != "__metadata__"]
        except (ValueError, AttributeError, KeyError, TypeError, IndexError):
            return None
    needed = 8 + header_bytes + max(ends, default=0)
    return (
        f"truncated: {size} of the {needed} bytes its header describes" if size < needed else None
    )


def _pickle_protocol(path: Path) -> int | None:
    """The protocol of a torch pickle's data (``PROTO n`` opening its ``data.pkl`` in the zip
    format, or its first pickle in the legacy one), when it is a valid one; else None."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                head = archive.read(name)[:2]
        else:
            with path.open("rb") as file:
                head = file.read(2)
    except Exception:  # best effort, for the message: a damaged archive fails anywhere
        return None
    if len(head) == 2 and head[0] == pickle.PROTO[0] and head[1] <= pickle.HIGHEST_PROTOCOL:
        return head[1]
    return None


def _select_submodel(
    obj: Any, path: Path, submodel: str | None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The flat ``{name: tensor}`` of one model out of whatever layout the file has, and the
    sub-model it is (None where the file has no sub-models: it is read whole)."""
    if not isinstance(obj, Mapping):
        raise LwmmError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key in NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise LwmmError(f"{path}: no tensors found (top-level keys: {keys})")
    sparse = next((k for k, v in tensors.items() if v.layout != torch.strided), None)
    if sparse is not None:
        raise LwmmError(
            f"{path}: tensor '{sparse}' is {str(tensors[sparse].layout).removeprefix('torch.')}; "
            "a merge takes dense tensors (re-save it with .to_dense())"
        )
    found = [p for p in SUBMODELS if any(k.startswith(p + ".") for k in tensors)]
    pick = None
    if found:
        pick = submodel or "model"
        if pick not in found:
            raise LwmmError(f"{path}: no sub-model '{pick}.' (it has: {', '.join(found)})")
        tensors = {k[len(pick) + 1 :]: v for k, v in tensors.items() if k.startswith(pick + ".")}
    return {k.removeprefix("module."): v for k, v in tensors.items()}, pick


def check_submodel(checkpoints: Sequence[Checkpoint], submodel: str | None) -> None:
    """Refuse a sub-model choice that none of ``checkpoints`` has sub-models for: it would
    change nothing, and a silent no-op would let a user believe it had."""
    if submodel is not None and not any(ck.submodel for ck in checkpoints):
        names = ", ".join(str(ck.path or ck.label) for ck in checkpoints)
        raise LwmmError(
            f"submodel='{submodel}': no sub-model prefixes (model., ema_model., imnet_model.) "
            f"in {names}, so it cannot apply"
        )


def _meta_tensor(view: Any, path: Path, name: str) -> torch.Tensor:
    dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
    if dtype is None:
        raise LwmmError(f"{path}: tensor '{name}' has unsupported dtype {view.get_dtype()}")
    return torch.empty(view.get_shape(), dtype=dtype, device="meta")


def _json_meta(metadata: Mapping[str, str], key: str, path: Path, kind: type) -> Any:
    """The JSON value of ``metadata[key]`` when it is a ``kind`` (list or dict), None when the
    key is absent; else an :class:`LwmmError` naming the file and the key."""
    if key not in metadata:
        return None
    try:
        value = json.loads(metadata[key])
    except ValueError:
        raise LwmmError(f"{path}: metadata '{key}' is not valid JSON") from None
    if not isinstance(value, kind):
        what = "list" if kind is list else "object"
        raise LwmmError(f"{path}: metadata '{key}' is not a JSON {what}")
    return value
