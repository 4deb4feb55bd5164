"""benchmarks/gpu_wheels.py brings a GPU machine every package that benchmarks/gpu.sh imports.

Such a machine has no package index, so a package missing there stops a step (the tests'
conftest imports hypothesis) or, worse, turns a timed step into a timed error: without scipy
the lab shows the failure in its error box, and the widgets benchmark, before it checked for
that, timed aligning at 21 ms. Here every import in what gpu.sh runs must come from the
standard library, the checkout, the machine's own packages or the wheels.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from importlib.metadata import packages_distributions
from pathlib import Path
from types import ModuleType

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def gpu_wheels() -> ModuleType:
    """benchmarks/gpu_wheels.py, loaded from its path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "benchmarks/gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def imports(path: Path) -> set[str]:
    """The top-level names a file imports, at load or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_wheels_and_the_machine_cover_what_gpu_sh_imports() -> None:
    wheels = gpu_wheels()
    brought = wheels.closure(wheels.NEED, "3.12") | wheels.closure(wheels.HAVE, "3.12")
    # gpu.sh runs the package, the tests but the notebooks' (it leaves those out) and benchmarks
    files = [
        *ROOT.glob("lwmm_lab/**/*.py"),
        *(p for p in ROOT.glob("tests/*.py") if p.name != "test_notebooks.py"),
        *(ROOT / "benchmarks" / f"{n}.py" for n in ("merge", "widgets", "analysis")),
    ]
    # the checkout's own, and what gpu.sh never reaches: the Dask and Ray sweep executors (a
    # GPU sweep runs in-process) and the browser test (not a CUDA test)
    local = {"lwmm_lab", "conftest", "dask", "ray", "playwright"}
    providers = packages_distributions()
    missing = {}
    for path in files:
        for name in imports(path) - local - set(sys.stdlib_module_names):
            dists = {canonicalize_name(d) for d in providers.get(name, [name])}
            if not dists & brought.keys():
                missing.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"imported on the GPU machine, but neither there nor in .whl: {missing}"


def test_the_wheels_leave_out_what_the_machine_has() -> None:
    wheels = gpu_wheels()
    have = wheels.closure(wheels.HAVE, "3.12")
    need = wheels.closure(wheels.NEED, "3.12")
    assert {"torch", "numpy", "pytest", "hypothesis", "scipy"} <= have.keys()
    brought = need.keys() - have.keys()
    assert {"segmentation-models-pytorch", "plotly", "ipython", "traitlets"} <= brought
    assert not brought & {"torch", "numpy", "narwhals", "scipy"}
