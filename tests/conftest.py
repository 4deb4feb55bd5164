"""Shared fixtures: small real smp models and random state dicts, on CPU and (when present) CUDA."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from importlib.util import find_spec

import pytest
import torch
from hypothesis import HealthCheck, settings
from tqdm.auto import tqdm

# Without a GPU, Triton's kernels (the merge's fused kernel) run under Triton's interpreter
# (numpy, on CPU tensors), so the tests check their arithmetic on any machine; set before the
# kernels are defined, when lwmm_lab's engine is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
#: Whether Triton kernels run on CPU tensors here (the tests that do so are skipped on a GPU).
TRITON_ON_CPU = os.environ.get("TRITON_INTERPRET") == "1" and bool(find_spec("triton"))

from lwmm_lab import Checkpoint, ModelSpec  # noqa: E402
from lwmm_lab.analysis import comparison  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Caches (sweeps, Fisher estimates) go to a temporary folder, never the checkout's data/."""
    os.environ.setdefault("LWMM_DATA", tempfile.mkdtemp(prefix="lwmm-test-data-"))


settings.register_profile(
    "lwmm",
    deadline=None,
    max_examples=int(os.environ.get("LWMM_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("lwmm")

#: A real smp Unet small enough to build and run in milliseconds.
TINY = ModelSpec("Unet", "tu-resnet10t", 5, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]})

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


class Payload:
    """An object a weights-only unpickler must refuse: pickling it stores a code reference."""


def perturbed_model(spec: ModelSpec, seed: int, counts: int = 0) -> torch.nn.Module:
    """A model of ``spec`` with seeded weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = spec.build()
    for name, t in model.state_dict().items():
        if name.endswith("running_mean"):
            t.normal_()
        elif name.endswith("running_var"):
            t.uniform_(0.5, 2.0)
        elif name.endswith("num_batches_tracked"):
            t.fill_(counts)
    return model


def checkpoint_of(model: torch.nn.Module, spec: ModelSpec | None = None) -> Checkpoint:
    return Checkpoint({k: v.clone() for k, v in model.state_dict().items()}, spec=spec)


@pytest.fixture
def make_models() -> Callable[..., list[torch.nn.Module]]:
    def make(n: int, spec: ModelSpec = TINY, counts: tuple[int, ...] | None = None):
        return [perturbed_model(spec, 100 + i, (counts or [0] * n)[i]) for i in range(n)]

    return make


@pytest.fixture(scope="session")
def quick_zoo(tmp_path_factory: pytest.TempPathFactory):
    """The quick zoo, built once per test session (about 45 s on two CPU cores)."""
    from lwmm_lab.zoo import ZooConfig, build_zoo

    folder = tmp_path_factory.mktemp("zoo-quick")
    build_zoo(folder, ZooConfig.quick_config(), device="cpu", log=lambda message: None)
    return folder


@pytest.fixture
def table_bars(monkeypatch: pytest.MonkeyPatch) -> list[tqdm]:
    """The progress bar of every comparison table made while the test runs, drawn to a string
    (the real ones wait two seconds before they show)."""
    bars: list[tqdm] = []

    def drawn(total: int) -> tqdm:
        bars.append(tqdm(total=total, file=io.StringIO()))
        return bars[-1]

    monkeypatch.setattr(comparison, "_scoring", drawn)
    return bars
