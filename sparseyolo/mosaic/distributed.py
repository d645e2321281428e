"""Many mosaics on Dask distributed: one task per window, merged and written here as each input completes.

Why Dask (not Ray): it installs from the package index as two pure-Python wheels (`dask`, `distributed`) with no
daemon to manage; `LocalCluster(n_workers=N, threads_per_worker=1)` gives N worker processes on one machine and
`Client("tcp://host:8786")` the same code on a cluster (`dask scheduler` / `dask worker`, SSH, Kubernetes, HPC
job queues through dask-jobqueue); a nanny restarts a worker that dies and the scheduler reruns the tasks it
held, `retries=` reruns tasks that raised. Ray does the same with a heavier runtime (its own object store, a
~100 MB wheel with pinned dependencies) that a window-per-task workload does not need.

Only small things travel: the raster's header (`RasterInfo`), the window, the detector's settings (the model is
loaded once per worker process, `sparseyolo.mosaic.detector.load_model`) out; the core's detections and a
quick-look piece back. Workers read their windows from `info.path` themselves, so on a cluster the rasters must be
at the same path on every worker (a shared file system or object storage GDAL reads).
"""

from __future__ import annotations

import logging
import uuid

from sparseyolo.mosaic.run import Job, window_task


def local_cluster(workers: int):
    """A Dask `LocalCluster` of `workers` single-thread worker processes, no dashboard, no memory limit."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=int(workers),
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        memory_limit=0,
        silence_logs=logging.ERROR,
    )


def connect(workers: int = 0, scheduler: str | None = None, timeout: str = "20s"):
    """`(client, cluster)`: a client of the scheduler at `scheduler`, or of a new local cluster (`cluster` then
    needs closing too). A scheduler that cannot be reached is a `ConnectionError` naming it."""
    from distributed import Client

    if scheduler is not None:
        try:
            return Client(scheduler, timeout=timeout), None
        except (OSError, TimeoutError) as e:
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {scheduler!r} ({e}): start one (`dask scheduler`) and its workers "
                "(`dask worker ADDRESS`), or use workers=N for a local cluster"
            ) from None
    cluster = local_cluster(workers)
    return Client(cluster), cluster


def _message(job: Job, window, error: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(error, KilledWorker):
        return (
            f"{job.info.path}: window {window.index} (rows {window.y0}-{window.y1}, columns {window.x0}-{window.x1}) "
            f"killed every worker that ran it ({error}); a worker runs out of memory at this window size? Use a "
            "smaller window= or more memory per worker"
        )
    text = str(error)
    return (
        text
        if job.info.path in text
        else f"{job.info.path}: window {window.index} failed: {type(error).__name__}: {text}"
    )


def run_on_cluster(
    jobs: dict[int, Job],
    detector,
    finish,
    fail,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    retries: int = 2,
    progress: bool = True,
    client=None,
) -> None:
    """Every window of every job as a Dask task; `finish(k, window_results)` as soon as job k's windows are all
    back, `fail(k, message)` when one of its windows failed (its other windows are cancelled). `client`: an existing
    `distributed.Client` to use instead of `workers`/`scheduler`."""
    import time

    from distributed import as_completed
    from tqdm import tqdm

    from sparseyolo.mosaic.outputs import quicklook_scale

    own = client is None
    cluster = None
    if own:
        client, cluster = connect(workers, scheduler)
    token = uuid.uuid4().hex[:8]
    futures, owner, done, failed = [], {}, {k: [] for k in jobs}, set()
    bar = tqdm(total=sum(len(j.windows) for j in jobs.values()), unit="window", desc="mosaic", disable=not progress)
    try:
        remote = client.scatter(detector, broadcast=True, hash=False)
        for k, job in jobs.items():
            job.started = time.perf_counter()
            scale = quicklook_scale(job.info.height, job.info.width)
            for w in job.windows:
                f = client.submit(
                    window_task,
                    job.info,
                    w,
                    remote,
                    scale,
                    key=f"mosaic-{token}-{k}-{w.index}",
                    retries=retries,
                    pure=False,
                )
                futures.append(f)
                owner[f.key] = (k, w)
        for f in as_completed(futures):
            k, w = owner[f.key]
            bar.update()
            if k in failed:
                continue
            if f.status != "finished":
                error = f.exception() if f.status == "error" else RuntimeError(f"task {f.status}")
                failed.add(k)
                client.cancel([g for g in futures if owner[g.key][0] == k and not g.done()])
                fail(k, _message(jobs[k], w, error))
                continue
            done[k].append(f.result())
            f.release()
            if len(done[k]) == len(jobs[k].windows):
                finish(k, done.pop(k))
    finally:
        bar.close()
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
