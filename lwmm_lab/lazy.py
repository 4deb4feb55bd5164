"""Names a package hands out from its modules when first asked for (PEP 562).

A package's ``__init__`` lists where each public name lives; importing the package then loads
none of those modules, so a light one (the zoo's manifest, the lab's figures) is imported
without the heavy ones beside it (the training loop, the widgets).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: each name in ``homes`` is read from
    the module it maps to on first use; any other name is an ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__
