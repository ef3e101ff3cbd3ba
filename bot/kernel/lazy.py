"""Modules loaded on first use (issue 19): SQLAlchemy is a quarter of a second and 23 MiB,
and a bot on its embedded SQLite file may never need it (a console ``/whoami`` does not).

``lazy_import(name)`` is the standard library's recipe (:class:`importlib.util.LazyLoader`):
the module object exists at once, its code runs when an attribute is first read. A module
already imported is returned as it is. Use it for module-level names only, with the real
import under ``TYPE_CHECKING`` so that type checking sees the module::

    if TYPE_CHECKING:
        import sqlalchemy as sa
    else:
        sa = lazy_import("sqlalchemy")
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

_lock = threading.RLock()  # a parent package may lazy_import in its __init__


def lazy_import(name: str) -> ModuleType:
    with _lock:
        module = sys.modules.get(name)
        if module is not None:
            return module
        parent, _, child = name.rpartition(".")
        if parent:
            importlib.import_module(parent)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"no module named {name!r}", name=name)
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        if parent:
            setattr(sys.modules[parent], child, module)
        return module


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) that imports each exported name's module when
    the name is first read: ``__getattr__ = lazy_exports(__name__, {"Name": "pkg.module"})``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
