"""Fetch data files shipped inside packages on the Python package registry (PyPI), with a local cache.

Only the package index is reachable from our machines, so real sample data comes from distributions that
bundle it: laspy's source distribution (airborne LiDAR scans), deepforest's wheel (aerial RGB + boxes).
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from sparseyolo.settings import cache_dir


def _download(requirement: str, dest: Path, sdist: bool) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = [p for p in dest.iterdir() if p.suffix in (".gz", ".whl", ".zip")]
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), requirement]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in dest.iterdir() if p.suffix in (".gz", ".whl", ".zip")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {requirement!r} from the package index (pip exit {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}\nCheck network access to the package index, or place the "
            f"file in {dest} by hand."
        )
    return found[0]


def fetch_member_files(requirement: str, patterns: list[str], *, sdist: bool) -> list[Path]:
    """Download `requirement` (e.g. ``"laspy==2.7.0"``) once and extract members matching `patterns`.

    Returns the extracted paths (sorted). Raises `RuntimeError` when the download fails and
    `FileNotFoundError` when no member matches.
    """
    name = requirement.replace("==", "-").replace("/", "_")
    root = cache_dir() / name
    out_dir = root / "files"
    archive = _download(requirement, root / "dist", sdist)
    out_dir.mkdir(parents=True, exist_ok=True)
    extracted: list[Path] = []

    def wanted(member: str) -> bool:
        return any(fnmatch.fnmatch(member, pat) for pat in patterns)

    if archive.suffix == ".gz":
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.isfile() and wanted(m.name):
                    target = out_dir / Path(m.name).name
                    if not target.exists():
                        target.write_bytes(tar.extractfile(m).read())
                    extracted.append(target)
    else:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if wanted(member) and not member.endswith("/"):
                    target = out_dir / Path(member).name
                    if not target.exists():
                        target.write_bytes(zf.read(member))
                    extracted.append(target)
    if not extracted:
        raise FileNotFoundError(f"no member of {archive.name} matches {patterns}")
    return sorted(set(extracted))
