"""What every dataset builder shares: reuse or refuse an existing output, an atomic write, the data.yaml."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


def prepare_out(out: Path, params: dict, force: bool, what: str) -> bool:
    """True when `out` holds a complete build with `params` (reuse it); raise `FileExistsError` when it holds
    anything that must not be replaced. Only an empty folder or a dataset build (with `build.json`) is ever
    replaced, and a build with other parameters only with `force`."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another output folder")
    manifest = out / "build.json"
    old = None
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text()).get("params")
        except (ValueError, AttributeError, OSError):  # an unreadable build.json: a damaged build
            old = None
    if old == params and not force:
        return True
    if not manifest.is_file() and any(out.iterdir()):  # never delete what we did not build
        raise FileExistsError(f"{out} is not empty and is not a dataset build (no build.json); not replacing it")
    if not force and manifest.is_file():
        if isinstance(old, dict) and old.get("dataset") == params.get("dataset"):
            diff = ", ".join(f"{k} {old.get(k)!r} there, {v!r} here" for k, v in params.items() if old.get(k) != v)
            why = f"holds a {what} build with other parameters ({diff})"
        elif isinstance(old, dict):
            why = "holds another dataset build"
        else:
            why = "holds a damaged build (unreadable build.json)"
        raise FileExistsError(f"{out} {why}; choose another output folder or pass force=True (--force) to replace it")
    return False


@contextlib.contextmanager
def atomic_build(out: Path):
    """Yield a temporary sibling folder to build into; on success it replaces `out`, on failure it is removed,
    so an interrupted build never leaves output that looks complete."""
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def data_yaml(out: Path, names: dict, val: str = "images/val") -> str:
    """Ultralytics dataset YAML text for a build at `out` (train: images/train)."""
    lines = "".join(f"  {k}: {v}\n" for k, v in names.items())
    return f"path: {out.resolve()}\ntrain: images/train\nval: {val}\nnames:\n{lines}"
