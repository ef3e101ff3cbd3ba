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

import importlib.util
import sys
import threading
from types import ModuleType

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
