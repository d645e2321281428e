"""Rasters read window by window with rasterio: inputs found, checked once, then read one window at a time.

A whole raster is never held: `RasterReader.read` returns one window's pixels. GeoTIFFs carry their CRS and affine
transform; PNG and JPEG (no georeferencing, or a world file GDAL reads) are taken too, in pixel coordinates.

Every problem with one input is a `MosaicInputError` naming the file and saying what to do; the run records it and
goes on with the other inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
QUICKLOOK_SUFFIX = ".quicklook.jpg"  # our own output: never an input
GDAL_CACHE_MB = 64  # GDAL's block cache while reading windows (its default, 5% of the RAM, only holds pixels that
# are read once: every window is read once, neighbours share a few blocks of their overlap)
GEOREFERENCED_DRIVERS = ("GTiff", "COG")  # formats that are expected to carry a CRS


class MosaicInputError(ValueError):
    """One input cannot be processed: the message names the file and says what to do."""


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know of one raster (small and picklable: it travels to distributed workers).

    transform: the affine pixel-to-map transform `(a, b, c, d, e, f)`: `X = a*col + b*row + c`,
    `Y = d*col + e*row + f` (rasterio's / GDAL's order; identity for a raster without georeferencing).
    crs: the CRS as WKT (None: pixel coordinates); crs_name: `EPSG:NNNN` when the CRS has an EPSG code.
    nodata: the raster's nodata value, when the bands used share one (None: none): a window that holds nothing else
    is not run (orthomosaics are often irregular footprints in a rectangle of nodata)."""

    path: str
    width: int
    height: int
    bands: tuple[int, ...]
    driver: str
    transform: tuple[float, float, float, float, float, float]
    crs: str | None
    crs_name: str | None
    nodata: float | None = None

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def list_inputs(source) -> list[Path]:
    """The rasters of `source`: a file, a folder (its `.tif/.tiff/.png/.jpg/.jpeg` files, sorted, not recursive; not
    the quick-looks of an earlier run written there), or a list of files. Raises `FileNotFoundError` for a missing
    path or a folder without rasters."""
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in list_inputs(s)]
    path = Path(source)
    if path.is_dir():
        found = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.endswith(QUICKLOOK_SUFFIX)
        )
        if not found:
            raise FileNotFoundError(f"no rasters in {path} (looked for {', '.join(SUFFIXES)} files)")
        return found
    if not path.exists():
        raise FileNotFoundError(f"source {path} not found: pass a raster file or a folder of rasters")
    return [path]


def _open(path: Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as e:
        raise MosaicInputError(
            f"{path}: cannot be read as a raster ({e}). The file is corrupt, truncated or not an image: re-export "
            "or re-download it (GeoTIFF, PNG or JPEG)"
        ) from None


def parse_bands(bands) -> tuple[int, ...] | None:
    """`bands` as a tuple of three 1-based band numbers (`"1,2,3"`, `[4, 3, 2]`, `"1,1,1"`), or None."""
    if bands is None:
        return None
    if isinstance(bands, str):
        try:
            bands = [int(b) for b in bands.replace(" ", "").split(",") if b]
        except ValueError:
            raise ValueError(f"bands must be three band numbers such as 1,2,3, got {bands!r}") from None
    try:
        out = tuple(int(b) for b in bands)
    except (TypeError, ValueError):
        raise ValueError(f"bands must be three band numbers such as 1,2,3, got {bands!r}") from None
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"bands must be three band numbers >= 1 (red, green, blue), such as 1,2,3, got {bands!r}")
    return out


def inspect_raster(path, bands=None, pixel: bool = False) -> RasterInfo:
    """Open `path`'s header and check it can be run: 3 bands of 8-bit samples (or `bands` picking three), and a CRS
    for GeoTIFFs (unless `pixel`: detections are then written in pixel coordinates). `MosaicInputError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MosaicInputError(f"{path}: file not found")
    chosen = parse_bands(bands)
    with _open(path) as ds:
        count, dtypes = ds.count, ds.dtypes
        if chosen is None and count != 3:
            hint = {
                1: "it is a single-band (grey or one channel) raster; pass bands=1,1,1 to repeat the band as RGB, or "
                "convert it to RGB",
                4: "it looks like RGBA or RGB + near infrared; pass bands=1,2,3 (or the band numbers of red, green, "
                "blue) to choose three",
            }.get(count, "pass bands=R,G,B with the band numbers of red, green and blue")
            raise MosaicInputError(f"{path}: has {count} band(s); the models take 3 (RGB): {hint}")
        use = chosen or (1, 2, 3)
        if max(use) > count:
            raise MosaicInputError(f"{path}: bands={','.join(map(str, use))} asks for band {max(use)}; it has {count}")
        dt = {dtypes[b - 1] for b in use}
        if dt != {"uint8"}:
            bits = ", ".join(sorted(dt))
            raise MosaicInputError(
                f"{path}: stores {bits} samples; the models take 8-bit RGB (uint8). Rescale it to 8 bits first, e.g. "
                f"`gdal_translate -ot Byte -scale MIN MAX 0 255 {path.name} out.tif` with your data's range"
            )
        crs = ds.crs
        if crs is None and ds.driver in GEOREFERENCED_DRIVERS and not pixel:
            raise MosaicInputError(
                f"{path}: has no CRS (no georeferencing), so its detections cannot be placed on a map. Assign one "
                f"(`gdal_edit.py -a_srs EPSG:XXXX -a_ullr ULX ULY LRX LRY {path.name}`), or pass pixel=True to write "
                "pixel coordinates"
            )
        nodatas = {ds.nodatavals[b - 1] for b in use}
        nodata = nodatas.pop() if len(nodatas) == 1 else None
        t = ds.transform if crs is not None else None
        epsg = crs.to_epsg() if crs is not None else None
        return RasterInfo(
            path=str(path),
            width=int(ds.width),
            height=int(ds.height),
            bands=tuple(use),
            driver=str(ds.driver),
            transform=(t.a, t.b, t.c, t.d, t.e, t.f) if t is not None else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            crs=crs.to_wkt() if crs is not None else None,
            crs_name=f"EPSG:{epsg}" if epsg else None,
            nodata=None if nodata is None else float(nodata),
        )


class RasterReader:
    """Reads windows of one raster (opened once; a context manager). `read(y0, x0, y1, x1)` returns
    `uint8 (y1 - y0, x1 - x0, 3)` RGB; a read that fails (a truncated or damaged file) is a `MosaicInputError`."""

    def __init__(self, info: RasterInfo):
        import rasterio

        self.info = info
        self._env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024)
        self._env.__enter__()
        try:
            self._ds = _open(Path(info.path))
        except BaseException:
            self._env.__exit__(None, None, None)
            raise

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        try:
            a = self._ds.read(list(self.info.bands), window=Window(x0, y0, x1 - x0, y1 - y0))
        except RasterioError as e:
            raise MosaicInputError(
                f"{self.info.path}: reading rows {y0}-{y1}, columns {x0}-{x1} failed ({e}). The file is corrupt or "
                "truncated: re-export or re-download it"
            ) from None
        return np.ascontiguousarray(a.transpose(1, 2, 0))

    def close(self) -> None:
        try:
            self._ds.close()
        finally:
            self._env.__exit__(None, None, None)

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
