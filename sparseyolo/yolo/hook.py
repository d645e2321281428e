"""Register SparseYOLO with Ultralytics whenever `ultralytics.nn.tasks` is (or gets) imported.

`install()` imports nothing heavy: if Ultralytics' parser module is already loaded it registers at once;
otherwise a `sys.meta_path` finder registers right after `ultralytics.nn.tasks` finishes loading. So after
`import sparseyolo.yolo` (which calls `install()`; `import sparseyolo` alone does not), plain Ultralytics code such as
`ultralytics.YOLO("path/to/yolov8n-sparse.yaml")` can build models with our blocks.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

TARGET = "ultralytics.nn.tasks"
_installed = False


def _register() -> None:
    from sparseyolo.yolo.registry import register_all

    register_all()


class _LoaderWrapper(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real spec once, without us
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _LoaderWrapper(spec.loader)
        return spec


def install(offline_env: bool = True) -> None:
    """Set the offline environment defaults (unless `offline_env=False`) and arrange registration."""
    global _installed
    if offline_env:
        from sparseyolo.yolo.env import apply_offline_defaults

        apply_offline_defaults()
    if TARGET in sys.modules:
        _register()
        return
    if not _installed:
        _installed = True
        sys.meta_path.insert(0, _Finder())
