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

ABOVE_THE_ENGINE = ("lwmm_lab.data", "lwmm_lab.analysis", "lwmm_lab.zoo", "lwmm_lab.lab")
WIDGETS = ("lwmm_lab.lab.widgets", "ipywidgets", "IPython", "anywidget")
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
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.splitlines()[-1])


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
        (importlib.import_module("lwmm_lab.lab"), "MergeLab", "lwmm_lab.lab.widgets"),
    ],
)
def test_packages_hand_out_their_public_names_on_first_use(
    package: object, name: str, home: str
) -> None:
    assert name in package.__all__ and name in dir(package)
    assert getattr(package, name) is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = package.Nope
