"""Download the wheels that benchmarks/gpu.sh needs on a GPU machine with no package index.

Such a machine's Python brings its own CUDA torch and much else (``HAVE``); gpu.sh's steps also
import smp, plotly and the widgets (``NEED``). This takes everything ``NEED`` requires,
recursively and at the versions this environment has, drops what ``HAVE`` brings with its own
requirements, and downloads the rest as CPython x86-64 Linux wheels (``--no-deps``: the list
is already whole). The list so follows smp's, plotly's and IPython's requirements as they
change, where a hand-kept one would drift; ``tests/test_gpu_wheels.py`` checks that ``NEED``
and ``HAVE`` together cover every import of what gpu.sh runs.

    python benchmarks/gpu_wheels.py [--dest .whl] [--python 3.12]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: What gpu.sh's steps import beyond the standard library, the checkout and ``HAVE``.
NEED = ("segmentation-models-pytorch", "plotly", "ipywidgets", "anywidget")
#: What the GPU machine's Python already has (with everything these require), as the device
#: tool's KINDS.md lists its image: the guide's torch, timm, safetensors, numpy, opencv, tqdm
#: and pytest, and also scipy (weight matching), hypothesis (the tests' conftest), torchmetrics
#: (the panoptic tests' reference) and plotly's narwhals. A wheel of one of these would only
#: shadow the machine's own, and scipy's alone is 35 MB of the 64 MiB a call may carry.
HAVE = (
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    "numpy",
    "opencv-python-headless",
    "tqdm",
    "pytest",
    "scipy",
    "hypothesis",
    "torchmetrics",
    "narwhals",
)
#: The GPU machine's interpreter, for the requirements' environment markers.
TARGET = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


def closure(roots: tuple[str, ...], python: str) -> dict[str, str]:
    """Every distribution ``roots`` need under CPython ``python`` (``"3.12"``) on x86-64 Linux,
    by canonical name, at the version this environment has."""
    target = TARGET | {"python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            sys.exit(f"gpu_wheels: {name} is needed but not installed here (run make setup)")
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(target):
                todo.append(req.name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=".whl", help="folder for the wheels (.whl)")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (3.12)")
    args = parser.parse_args()
    have = closure(HAVE, args.python)
    wheels = {n: v for n, v in closure(NEED, args.python).items() if n not in have}
    print(f"gpu_wheels: {len(wheels)} wheels into {args.dest}/: {', '.join(sorted(wheels))}")
    platforms = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", args.python, "--implementation", "cp", "-d", args.dest]
        + [arg for p in platforms for arg in ("--platform", p)]
        + [f"{n}=={v}" for n, v in sorted(wheels.items())],
        check=True,
    )


if __name__ == "__main__":
    main()
