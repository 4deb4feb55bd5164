"""The flow runs one way: a layer, imported on its own, loads nothing above it.

Each check imports every module of a layer in a fresh interpreter and looks at what ended up
in ``sys.modules``, so an import hidden in a package's ``__init__`` counts too.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import lwmm_lab
from lwmm_lab.zoo.manifest import load_manifest, scenario_checkpoints

ABOVE_THE_ENGINE = ("lwmm_lab.data", "lwmm_lab.analysis", "lwmm_lab.zoo", "lwmm_lab.lab")
PANELS = ("lwmm_lab.lab.panel", "lwmm_lab.lab.merge_lab", "lwmm_lab.lab.explorers")
WIDGETS = (*PANELS, "ipywidgets", "IPython", "anywidget")
TOP = ("lwmm_lab.cli",)
# The zoo scores its models with the evaluation modules; the analyses that measure the zoo
# (findings, regimes, comparison, sweeps, ...) sit above it.
ZOO_MAY_LOAD = ("lwmm_lab.analysis.evaluation", "lwmm_lab.analysis.panoptic")

LAYERS = {
    "lwmm_lab.engine": (*ABOVE_THE_ENGINE, *TOP, "plotly", *WIDGETS),
    "lwmm_lab.data": ("lwmm_lab.engine", *ABOVE_THE_ENGINE[1:], *TOP, "plotly", *WIDGETS),
    "lwmm_lab.zoo": ("lwmm_lab.analysis", "lwmm_lab.lab", *TOP, "plotly", *WIDGETS),
    "lwmm_lab.analysis": ("lwmm_lab.lab", *TOP, "plotly", *WIDGETS),
    "lwmm_lab.lab.figures": (*TOP, *WIDGETS),
}


def _modules(layer: str) -> list[str]:
    """The layer's modules: a subpackage's every module, or one module."""
    package = importlib.import_module(layer)
    if not hasattr(package, "__path__"):
        return [layer]
    found = pkgutil.walk_packages(package.__path__, prefix=f"{layer}.")
    return [layer, *(m.name for m in found)]


def _loaded_after_importing(modules: list[str]) -> list[str]:
    """Every module a fresh interpreter holds after importing ``modules``."""
    return _loaded_after_running(f"for m in {modules!r}: importlib.import_module(m)")


def _loaded_after_running(code: str) -> list[str]:
    """Every module a fresh interpreter holds after running ``code``."""
    code = f"import importlib, json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _matches(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``prefix`` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer", list(LAYERS))
def test_a_layer_loads_nothing_above_it(layer: str) -> None:
    loaded = _loaded_after_importing(_modules(layer))
    allowed = ZOO_MAY_LOAD if layer == "lwmm_lab.zoo" else ()
    above = sorted(
        name
        for name in loaded
        for prefix in LAYERS[layer]
        if _matches(name, prefix)
        and not any(_matches(name, a) or _matches(a, name) for a in allowed)
    )
    roots = [name for name in above if name.rpartition(".")[0] not in above]
    assert roots == [], f"importing {layer} loads {roots}"


@pytest.mark.parametrize(
    ("package", "name", "home"),
    [
        (lwmm_lab, "Pool", "lwmm_lab.engine.pool"),
        (lwmm_lab, "make_plan", "lwmm_lab.engine.merge"),
        (lwmm_lab, "LwmmError", "lwmm_lab.errors"),
        (importlib.import_module("lwmm_lab.lab"), "MergeLab", "lwmm_lab.lab.merge_lab"),
        (importlib.import_module("lwmm_lab.lab"), "SweepExplorer", "lwmm_lab.lab.explorers"),
        (importlib.import_module("lwmm_lab.zoo"), "build_zoo", "lwmm_lab.zoo.build"),
    ],
)
def test_packages_hand_out_their_public_names_on_first_use(
    package: object, name: str, home: str
) -> None:
    assert name in package.__all__ and name in dir(package)
    assert getattr(package, name) is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = package.Nope


def _heavy(loaded: list[str], heavy: tuple[str, ...]) -> list[str]:
    return [m for m in loaded if any(_matches(m, h) for h in heavy)]


def test_the_command_line_answers_without_torch(quick_zoo) -> None:
    """``lwmm --help``, a command's parse and ``lwmm zoo list`` load neither torch nor smp:
    importing them takes seconds, and these need only names and the manifest."""
    loaded = _loaded_after_running(
        "import contextlib, io\n"
        "from lwmm_lab.cli import build_parser, main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    with contextlib.suppress(SystemExit): main(['--help'])\n"
        f"    assert main(['zoo', 'list', '--zoo', {str(quick_zoo)!r}]) == 0\n"
        "build_parser().parse_args(['merge', 'a', 'b', '-o', 'm.safetensors'])"
    )
    assert _heavy(loaded, ("torch", "segmentation_models_pytorch", "plotly", "scipy")) == []


def test_a_merge_loads_no_model_library(quick_zoo) -> None:
    """``lwmm inspect`` of the zoo's files builds no model and aligns nothing: smp (with timm
    and torchvision) and scipy stay unloaded."""
    paths = scenario_checkpoints(load_manifest(quick_zoo), "independent")
    loaded = _loaded_after_running(
        "import contextlib, io\n"
        "from lwmm_lab.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['inspect', *{paths!r}]) == 0"
    )
    assert _heavy(loaded, ("segmentation_models_pytorch", "timm", "scipy", "plotly")) == []
