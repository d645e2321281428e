"""The mosaic pipeline: every input raster window by window, detections merged, outputs written, resumable.

`predict_mosaic` is the Python entry point (`sparseyolo mosaic` calls it). One input at a time in this process
(`workers=0`), or every window of every input as a task on a Dask cluster (`workers=N`: a local cluster of N
single-thread worker processes; `scheduler=ADDRESS`: an existing cluster). Both run the same `window_task` on the
same windows and merge the same way, so they give the same detections.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sparseyolo.mosaic.detector import YOLODetector, clip, padded
from sparseyolo.mosaic.merge import Detections, keep_core, merge_windows
from sparseyolo.mosaic.outputs import QuickLook, is_done, quicklook_piece, quicklook_scale, write_outputs
from sparseyolo.mosaic.raster import (
    MosaicInputError,
    RasterInfo,
    RasterReader,
    inspect_raster,
    list_inputs,
    parse_bands,
)
from sparseyolo.mosaic.windows import (
    DEFAULT_MAX_OBJECT,
    DEFAULT_WINDOW,
    Window,
    check_window,
    default_overlap,
    window_grid,
)

FORMAT = 1  # bump when the outputs change for the same settings (finished inputs are then rerun)


@dataclass
class WindowResult:
    """What one window gives back: its detections whose centre is in its core (raster pixels) and its core
    downscaled for the quick-look."""

    index: int
    detections: Detections
    piece: tuple | None
    seconds: float = 0.0


@dataclass
class InputResult:
    """The outcome for one input: `status` is `done`, `skipped` (finished by an earlier run with the same settings)
    or `failed` (`error` says why and what to do)."""

    path: str
    status: str
    error: str | None = None
    detections: int = 0
    windows: int = 0
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)


@dataclass
class Job:
    """One input to run: its raster, its windows."""

    info: RasterInfo
    windows: list[Window]
    started: float = 0.0


_LIBC = []


def release_memory() -> None:
    """Hand the heap pages freed by the last window back to the OS (glibc's `malloc_trim`; nothing elsewhere): the
    next window's tensors then start from a clean heap instead of a fragmented one (~0.1 GB less peak at 4096)."""
    if not _LIBC:
        import ctypes

        try:
            _LIBC.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0](0)


def window_task(info: RasterInfo, window: Window, detector, scale: float, reader: RasterReader | None = None):
    """Read `window` of `info`'s raster, run `detector` on it (padded to the stride), keep the core's detections.
    A window of nothing but the raster's nodata value is not run."""
    release_memory()
    t0 = time.perf_counter()
    own = reader is None
    reader = RasterReader(info) if own else reader
    try:
        pixels = reader.read(window.y0, window.x0, window.y1, window.x1)
    finally:
        if own:
            reader.close()
    if info.nodata is not None and (pixels == info.nodata).all():
        core = Detections.empty()  # nothing but nodata: nothing to find
    else:
        det = detector(padded(pixels, int(detector.stride)))
        core = keep_core(det, window)
    return WindowResult(window.index, core, quicklook_piece(pixels, window, scale), time.perf_counter() - t0)


def merge_job(job: Job, results: list[WindowResult], iou: float) -> tuple[Detections, QuickLook]:
    """The raster's detections and quick-look from its windows' results."""
    by_index = {r.index: r for r in results}
    missing = [w.index for w in job.windows if w.index not in by_index]
    if missing:
        raise RuntimeError(f"{job.info.path}: windows {missing[:5]} have no result")
    det = merge_windows([(w, by_index[w.index].detections) for w in job.windows], iou)
    look = QuickLook(job.info.height, job.info.width)
    for w in job.windows:
        look.paste(by_index[w.index].piece)
    return clip(det, job.info.height, job.info.width), look


def as_detector(model, conf: float, iou: float, device: str, threads: int | None):
    """A `YOLODetector` for a model name, path or YOLO object; any other object with `stride`, `names` and
    `__call__` is used as the detector itself."""
    if isinstance(model, (str, Path)) or (hasattr(model, "predict") and hasattr(model, "model")):
        return YOLODetector(model, conf=conf, iou=iou, device=device, threads=threads)
    if callable(model) and hasattr(model, "stride") and hasattr(model, "names"):
        return model
    raise TypeError(
        f"model must be a model name or path, a sparseyolo.YOLO, or a detector (stride, names, __call__), got "
        f"{type(model).__name__}"
    )


def check_sendable(detector) -> None:
    """Raise a `TypeError` saying what to pass when `detector` cannot travel to Dask workers."""
    import cloudpickle

    try:
        cloudpickle.dumps(detector)
    except Exception as e:
        cause = e.__cause__ or e
        raise TypeError(
            f"the model cannot be sent to Dask workers ({cause}). With workers= or scheduler=, pass the model by name "
            "or path (a shipped reference name, a model YAML or a .pt file), or a picklable detector"
        ) from None


def predict_mosaic(
    model,
    source,
    out,
    *,
    window: int = DEFAULT_WINDOW,
    overlap: int | None = None,
    max_object: int = DEFAULT_MAX_OBJECT,
    conf: float = 0.25,
    iou: float = 0.7,
    bands=None,
    pixel: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    threads: int | None = None,
    retries: int = 2,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
) -> list[InputResult]:
    """Detect objects in every raster of `source` (a file, a folder, a list) window by window and write, per input,
    `OUT/<name>.geojson` (map coordinates, CRS recorded), `.csv` and `.coco.json` (pixels), `.quicklook.jpg`, and
    `.done.json` last (`sparseyolo.mosaic.outputs`). Returns one `InputResult` per input, in `source` order.

    model: a shipped reference name, a model YAML, a `.pt` file or a `sparseyolo.YOLO` (run at native resolution;
    `conf`, `iou` as in `predict`), or any detector object (`sparseyolo.mosaic.detector`). window: the side of the
    windows read (rounded down to the model's stride). overlap: pixels shared by neighbouring windows, at least the
    largest object (default `2 * max_object`; rounded up to the stride). bands: three band numbers to use as RGB
    (`"1,2,3"`) for rasters of other than 3 bands. pixel: accept GeoTIFFs without a CRS (pixel coordinates).
    workers: 0 runs here, in this process; N >= 1 starts a local Dask cluster of N single-thread worker
    processes; scheduler: the address of a running Dask scheduler (its workers must have sparseyolo and read
    `source` at the same path). threads: torch threads per process (default: this process's setting here,
    1 on workers). retries: times a failing window task is retried on a cluster (a window whose worker died is
    rerun by the scheduler regardless). force: rerun inputs that are already done with the same settings.

    A bad input (unreadable, corrupt or truncated, not 3 bands, not 8-bit, a GeoTIFF without CRS) fails alone with
    a message naming it; the others go on. A missing model, a missing source or a bad window is an error at once.
    """
    distributed = scheduler is not None or (workers or 0) > 0
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0: this process), got {workers!r}")
    if scheduler is not None and workers:
        raise ValueError("give workers=N (a local cluster) or scheduler=ADDRESS (a running one), not both")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    bands = parse_bands(bands)  # a malformed value is an error at once, not one per input
    detector = as_detector(model, conf, iou, device, threads if threads is not None or not distributed else 1)
    stride = int(detector.stride)  # loads the model: a missing one fails here, before any work
    if distributed:
        check_sendable(detector)
    names = detector.names
    window, overlap = check_window(window, default_overlap(max_object) if overlap is None else overlap, stride)
    inputs = list_inputs(source)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out={out} exists and is not a folder: choose an output folder")
    out.mkdir(parents=True, exist_ok=True)
    describe = detector.describe() if hasattr(detector, "describe") else {"detector": type(detector).__name__}
    settings = {"format": FORMAT, **describe, "iou": float(iou), "window": window, "overlap": overlap}
    settings.update(bands=None if bands is None else list(bands), pixel=bool(pixel))

    results: dict[int, InputResult] = {}
    jobs: dict[int, Job] = {}
    seen: dict[str, str] = {}
    for k, path in enumerate(inputs):
        name = path.stem
        if name in seen:
            results[k] = InputResult(
                str(path),
                "failed",
                f"{path}: its outputs would overwrite those of {seen[name]} (same name "
                f"{name!r}): rename one, or run them into different out= folders",
            )
            continue
        seen[name] = str(path)
        if not force and is_done(out, name, settings):
            results[k] = InputResult(str(path), "skipped")
            continue
        try:
            info = inspect_raster(path, bands=bands, pixel=pixel)
        except MosaicInputError as e:
            results[k] = InputResult(str(path), "failed", str(e))
            continue
        jobs[k] = Job(info, window_grid(info.height, info.width, window, overlap))

    def finish(k: int, window_results: list[WindowResult]) -> None:
        job = jobs[k]
        det, look = merge_job(job, window_results, iou)
        seconds = time.perf_counter() - job.started
        stats = {
            "detections": len(det),
            "windows": len(job.windows),
            "seconds": round(seconds, 3),
            "window_seconds": round(sum(r.seconds for r in window_results), 3),
            "width": job.info.width,
            "height": job.info.height,
        }
        paths = write_outputs(out, job.info, det, names, look, settings, stats)
        results[k] = InputResult(
            job.info.path, "done", None, len(det), len(job.windows), seconds, {k2: str(v) for k2, v in paths.items()}
        )

    def fail(k: int, message: str) -> None:
        results[k] = InputResult(jobs[k].info.path, "failed", message, windows=len(jobs[k].windows))

    if jobs:
        if distributed:
            from sparseyolo.mosaic.distributed import run_on_cluster

            run_on_cluster(
                jobs, detector, finish, fail, workers=workers, scheduler=scheduler, retries=retries, progress=progress
            )
        else:
            run_here(jobs, detector, finish, fail, progress=progress)
    return [results[k] for k in range(len(inputs))]


def run_here(jobs: dict[int, Job], detector, finish, fail, progress: bool = True) -> None:
    """Every job in this process, one window at a time (one window's pixels in memory at once)."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(j.windows) for j in jobs.values()), unit="window", desc="mosaic", disable=not progress)
    try:
        for k, job in jobs.items():
            bar.set_postfix_str(job.info.name)
            job.started = time.perf_counter()
            scale = quicklook_scale(job.info.height, job.info.width)
            done: list[WindowResult] = []
            try:
                with RasterReader(job.info) as reader:
                    for w in job.windows:
                        done.append(window_task(job.info, w, detector, scale, reader))
                        bar.update()
            except MosaicInputError as e:
                bar.update(len(job.windows) - len(done))
                fail(k, str(e))
                continue
            finish(k, done)
    finally:
        bar.close()
