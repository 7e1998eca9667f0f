"""The sweep driver: take the results directory's lock, repair it after any crash, skip what is
finished, pack the rest (biggest first), dispatch packs to long-lived Ray workers with a bound
on work in flight, and write each pack's rows to the store as soon as it returns. What is
measured in the driver after training, from checkpoints, is in :mod:`sweeps.passes`.

Failure is data: a pack whose worker process dies is run again (on the restarted actor or
another one); a pack that has killed its worker ``ray.max_pack_attempts`` times is recorded
``failed`` with the error, and the sweep goes on.

A small sweep on the embedded instance runs its packs in this process instead, one after
another, with the same worker class (``ray.inline``, :func:`runs_inline`): starting Ray and
its workers costs seconds that a sweep of a few seconds' work would not win back.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
import torch
from ray._private import ray_constants
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from tqdm import tqdm

import landscape
from landscape.pack import make_packs
from landscape.run import failed_rows, metrics_id
from landscape.train import resolve_device
from landscape.variant import ConfigError, Variant
from sweeps.cluster import check_cluster
from sweeps.config import SweepPlan, check_fits_this_machine
from sweeps.cost import cpu_seconds, schedule
from sweeps.lock import ResultsLock, ResultsLockedError
from sweeps.manifest import build_manifest, check_same_base
from sweeps.mps import check_mps_available, mps_daemon
from sweeps.passes import measurable_from_checkpoints, run_passes
from sweeps.reaper import reap_with_driver
from sweeps.signals import installed as signals_installed
from sweeps.signals import keep_handlers
from sweeps.store import FINISHED, Store
from sweeps.trackers import PackCallback, make_tracker
from sweeps.workers import PackWorker

WAIT_LOG_S = 60.0  # with no result for this long, say what the driver is waiting for
# ray.inline=auto runs a sweep in this process below this estimate of its work on one CPU core
# (sweeps.cost.cpu_seconds). On this project's 2-core x86_64 CPU the embedded instance and its
# workers take about 6 s to start, and two workers then do the work at about 1.4x one
# process's speed (the demo: 17.4 s of packs in 12.3 s), so one process wins below ~20 s there;
# with 8 cores (workers at ~5.6x) below ~7.5 s.
INLINE_BELOW_S = 8.0
DIED = (RayActorError, WorkerCrashedError)


@dataclass
class SweepSummary:
    total: int
    skipped: int
    ran: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    worker_deaths: int = 0
    remeasured: int = 0  # finished variants measured again from their checkpoints
    wall_time_s: float = 0.0
    to_run: int = 0  # variants this command set out to run

    def finished_line(self) -> str:
        """What this command has finished so far, and what is left, in a few words."""
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        ran = f"{self.ran} of {self.to_run} variants ran" + (f" ({counts})" if counts else "")
        left = self.to_run - self.ran
        return f"{ran} and are saved ({self.skipped} were finished before); {left} to go"


class SweepStopped(KeyboardInterrupt):
    """The sweep was stopped (a signal, Ctrl-C) after writing what it had finished; ``summary``
    is None when it stopped before reading the results directory."""

    def __init__(self, summary: SweepSummary | None, cause: BaseException):
        super().__init__(str(cause))
        self.summary, self.cause = summary, cause


class DiskFull(OSError):
    """A write found no space left; what was finished before it is kept (``summary``)."""

    def __init__(self, summary: SweepSummary | None, cause: OSError):
        super().__init__(cause.errno, str(cause))
        self.summary, self.cause = summary, cause


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, as Python or pyarrow report it (pyarrow's IOError has no errno)."""
    if not isinstance(exc, OSError):
        return False
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc)


def _ray_init_kwargs(plan: SweepPlan) -> dict[str, Any]:
    """``ray.address``: null joins the cluster in RAY_ADDRESS if that is set, else starts a local
    instance; ``local`` always starts one; ``auto`` or host:port joins a cluster."""
    kwargs: dict[str, Any] = dict(
        include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True
    )
    if plan.ray.ship_code:  # nodes need the dependencies only; our packages travel with the job
        kwargs["runtime_env"] = {
            "py_modules": [str(Path(landscape.__file__).parent), str(Path(__file__).parent)]
        }
    address = plan.ray.resolved_address()
    kwargs["address"] = address
    if address == "local":
        kwargs["num_cpus"] = plan.ray.num_cpus
    return kwargs


def _init_ray(plan: SweepPlan, log: Callable[[str], None]) -> bool:
    """Start a local instance or join a cluster; returns True if this call started Ray. Joining
    checks the cluster first (:func:`sweeps.cluster.check_cluster`), each step bounded by
    ``ray.connect_timeout_s``, and fails with one line naming the address and Ray's reason."""
    wait_for_ray_shutdown()
    if ray.is_initialized():
        return False
    kwargs = _ray_init_kwargs(plan)
    if kwargs["address"] == "local":
        _loopback_only()
        if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
            log(
                "warning: RAY_AUTH_MODE disables Ray's token authentication; the local Ray instance "
                "listens on the loopback interface only, but any user of this machine can run code in it"
            )
    else:
        log(f"joining the Ray cluster at {kwargs['address']}")
        if plan.ray.num_cpus is not None:
            log("ray.num_cpus only sizes a local instance; ignored when joining a cluster")
        kwargs["address"] = check_cluster(
            kwargs["address"], plan.ray.connect_timeout_s, _loopback_only, log
        )
    try:
        with keep_handlers(), _no_ray_sigterm_handler():
            ray.init(**kwargs)
    except KeyboardInterrupt:  # stopped while Ray was starting: end what had started
        ray.shutdown()
        raise
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"ray.address={kwargs['address']}: cannot start or join Ray: {reason}"
        ) from exc
    if kwargs["address"] == "local":
        reap_with_driver()
    return True


@contextmanager
def _no_ray_sigterm_handler() -> Iterator[None]:
    """Where the command line's handlers stop the driver, ``ray.init`` must not put its own
    SIGTERM handler in place, even for a moment: it exits through ``sys.exit`` mid-start."""
    if not signals_installed():
        yield
        return
    utils = ray._private.utils
    original = utils.set_sigterm_handler
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original


def _loopback_only() -> None:
    """Make the embedded instance listen on 127.0.0.1 only. Ray binds its servers to the node's
    IP address, which it takes to be the loopback address when multi-node clusters are off (its
    own default on macOS and Windows, chosen by this variable); on Linux it would otherwise be
    the host's address on every interface. Child processes inherit the variable."""
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _check_resources(plan: SweepPlan) -> None:
    """A worker that asks for more than the cluster has would wait forever: say so instead."""
    total = ray.cluster_resources()
    for key, need in (("CPU", plan.ray.cpus_per_worker), ("GPU", plan.ray.gpus_per_worker)):
        if need > total.get(key, 0):
            raise ConfigError(
                f"ray.{key.lower()}s_per_worker must be <= the {key}s of the Ray cluster ({total.get(key, 0):g}), "
                f"got {need:g}"
            )


def _num_workers(plan: SweepPlan, n_packs: int) -> int:
    if plan.ray.num_workers:
        return min(plan.ray.num_workers, n_packs)
    res = ray.available_resources()
    limits = [n_packs, max(1, int(res.get("CPU", 1) // max(plan.ray.cpus_per_worker, 1e-9)))]
    if plan.ray.gpus_per_worker > 0:
        limits.append(max(1, int(res.get("GPU", 0) // plan.ray.gpus_per_worker)))
    return max(1, min(limits))


def _stale(
    plan: SweepPlan,
    ids: list[str],
    recorded: dict[str, dict],
    mid: str,
    remeasure: bool,
    old_manifest: dict | None,
) -> set[str]:
    """Finished variants measured with other metrics settings: refused unless ``remeasure``."""
    stale = {
        i
        for i in ids
        if i in recorded
        and recorded[i]["status"] in FINISHED
        and recorded[i].get("metrics_id") != mid
    }
    stale -= measurable_from_checkpoints(plan, stale, recorded)
    if stale and not remeasure:
        old_ids = sorted({str(recorded[i].get("metrics_id")) for i in stale})
        old_preset = ((old_manifest or {}).get("config", {}).get("metrics") or {}).get(
            "preset", "?"
        )
        raise ConfigError(
            f"{len(stale)} variants in {plan.results_dir} were measured with metrics_id {', '.join(old_ids)} "
            f"(metrics={old_preset}); metrics={plan.metrics.preset} (metrics_id {mid}) needs them retrained, "
            "since they have no checkpoints (checkpoints=true keeps them) or the new metrics are taken "
            "during training: pass --remeasure to retrain them and replace their rows, "
            "or choose another sweep.name or out_dir"
        )
    return stale


def run_sweep(
    plan: SweepPlan,
    *,
    progress: bool = True,
    retry_failed: bool = False,
    remeasure: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
    worker_cls: type = PackWorker,
    worker_kwargs: dict | None = None,
    on_pack: PackCallback | None = None,
    shutdown_later: bool = False,
) -> SweepSummary:
    """Run what the results directory lacks of ``plan``. Raises ConfigError (one line) when the
    directory is another driver's, holds another base config (unless ``force``) or other
    metrics (unless ``remeasure``); nothing is changed then but crash repairs. The embedded
    instance started here is gone when this returns, unless ``shutdown_later``: then it is
    still ending, and :func:`wait_for_ray_shutdown` waits for it (the command line draws the
    report meanwhile)."""
    t0 = time.perf_counter()
    summary: SweepSummary | None = None
    joined = False
    try:
        if plan.ray.mps:  # before anything is written
            _check_mps(plan)
        if plan.ray.resolved_address() != "local":  # the cluster answers before anything is written
            joined = _init_ray(plan, log)
            _check_resources(plan)  # the cluster's CPUs and GPUs, before anything is written
        else:  # the embedded instance's: this machine's, and each pack's memory on its device
            check_fits_this_machine(plan, ray_started=ray.is_initialized())
        if on_pack is None:  # tracker.kind from the config (none by default)
            on_pack = make_tracker(plan.tracker, plan.results_dir)
        summary = _run_locked(
            plan, retry_failed, remeasure, force, log, progress, worker_cls, worker_kwargs, on_pack
        )
    except KeyboardInterrupt as exc:
        raise SweepStopped(getattr(exc, "summary", None), exc) from None
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(getattr(exc, "summary", None), exc) from None
        raise
    finally:
        if joined:
            ray.shutdown()
        if not shutdown_later:
            wait_for_ray_shutdown()
    summary.wall_time_s = time.perf_counter() - t0
    return summary


def _run_locked(
    plan: SweepPlan,
    retry_failed: bool,
    remeasure: bool,
    force: bool,
    log: Callable[[str], None],
    progress: bool,
    worker_cls: type,
    worker_kwargs: dict | None,
    on_pack: PackCallback | None,
) -> SweepSummary:
    store = Store(plan.results_dir)
    lock = ResultsLock(plan.results_dir)
    try:
        lock.acquire()
    except ResultsLockedError as exc:
        raise ConfigError(str(exc)) from None
    summary = None
    try:
        for line in store.recover().lines():
            log(line)
        old = store.read_manifest()
        forced = check_same_base(old, plan, force)
        ids = [v.variant_id for v in plan.variants]  # hashed once (a Variant hashes on each access)
        recorded = store.recorded()
        todo, redo = _todo(plan, ids, recorded, retry_failed, remeasure, old)
        summary = SweepSummary(total=len(ids), skipped=len(ids) - len(todo), to_run=len(todo))
        replacing = f" ({len(redo)} replacing recorded rows)" if redo else ""
        failed = sum(recorded.get(i, {}).get("status") == "failed" for i in ids if i not in redo)
        retry = f"; {failed} of them failed: --retry-failed runs them again" if failed else ""
        log(
            f"sweep {plan.name}: {summary.total} variants, {summary.skipped} already finished "
            f"(skipped), {len(todo)} to run{replacing}{retry}"
        )
        manifest = build_manifest(plan, old, ids, forced)
        if todo:
            ids_of = {id(v): i for v, i in zip(plan.variants, ids)}
            dispatch = _Dispatch(plan, store, summary, ids_of, worker_cls, worker_kwargs or {}, log)
            dispatch.show_progress = progress
            dispatch.on_pack = on_pack
            _run_on_ray(plan, store, manifest, todo, redo, dispatch)
        else:  # nothing to train: "updated" stays the last training command's start
            store.write_manifest(manifest, unless_only=("updated",))
        summary.remeasured = run_passes(plan, store, ids, log)
        for table in store.tables():
            store.harmonize(table)
    except (KeyboardInterrupt, OSError) as exc:
        exc.summary = summary  # what had finished, for the one line the command prints
        raise
    finally:
        lock.release()
    return summary


def _todo(
    plan: SweepPlan,
    ids: list[str],
    recorded: dict[str, dict],
    retry_failed: bool,
    remeasure: bool,
    old_manifest: dict | None,
) -> tuple[list[Variant], set[str]]:
    """The variants to run, and those of them whose recorded rows they replace."""
    redo = _stale(plan, ids, recorded, metrics_id(plan.metrics), remeasure, old_manifest)
    if retry_failed:
        redo |= {i for i in ids if recorded.get(i, {}).get("status") == "failed"}
    todo = [v for v, i in zip(plan.variants, ids) if i not in recorded or i in redo]
    return todo, redo


def runs_inline(plan: SweepPlan, packs: list[list[Variant]], log: Callable[[str], None]) -> bool:
    """Whether the packs run in this process (``ray.inline``): ``true``; or ``auto`` on the
    embedded instance not started yet, without MPS, on a CPU device, with an estimate of the
    work on one core below :data:`INLINE_BELOW_S`. Logs the choice of ``auto``."""
    local = plan.ray.resolved_address() == "local" and not plan.ray.mps
    if plan.ray.inline is True:
        if not local:  # RAY_ADDRESS names a cluster (the config's own address was checked)
            raise ConfigError(
                f"ray.inline=true runs the packs in this process, without Ray, got RAY_ADDRESS="
                f"{os.environ.get('RAY_ADDRESS')}: unset it, or set ray.inline=false"
            )
        return True
    if plan.ray.inline is False or not local or ray.is_initialized():
        return False
    if resolve_device(plan.device).type != "cpu":
        return False
    seconds = cpu_seconds([v for p in packs for v in p], plan.metrics)
    if seconds >= INLINE_BELOW_S:
        return False
    log(
        f"running the {len(packs)} packs in this process, without Ray: about {seconds:.0f} s "
        "of work, less than starting Ray would cost (ray.inline=false runs them on Ray)"
    )
    return True


def _run_on_ray(
    plan: SweepPlan,
    store: Store,
    manifest: dict,
    todo: list[Variant],
    redo: set[str],
    dispatch: _Dispatch,
) -> None:
    """Start or join Ray (with ``ray.mps``, under the MPS daemon), then (only once Ray says the
    workers fit) write the manifest, drop the rows being replaced, and dispatch the packs,
    biggest first."""
    packs = make_packs(todo, plan.pack.max_members)
    if runs_inline(plan, packs, dispatch.log):
        store.write_manifest(manifest)
        store.supersede(redo)
        dispatch.run_inline(packs)
        return
    with _mps(plan, dispatch.log):
        started = _init_ray(plan, dispatch.log)
        try:
            _check_resources(plan)
            store.write_manifest(manifest)
            store.supersede(redo)
            n_workers = _num_workers(plan, len(packs))
            scheduled = schedule(packs, plan.metrics, n_workers)
            dispatch.run(scheduled, n_workers)
        except BaseException:
            if started:
                ray.shutdown()
            raise
        if started and plan.ray.mps:  # its workers end before the daemon does
            ray.shutdown()
        elif started:  # every result is written: the instance ends while the driver goes on
            _shutdown_in_background()


# ray.shutdown after a finished dispatch, in a thread that overlaps the driver's passes and the
# report; joined before Ray starts again and before the command exits. Every result is written
# by then and the workers are idle, so the instance's processes are killed outright: Ray's own
# shutdown gives each a second to exit, one after another (1.34 against 0.30 s on this
# project's 2-core CPU). Its agents, orphaned either way, end with the driver (the reaper).
_shutting_down: list[threading.Thread] = []


def _shutdown_now() -> None:
    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None:
        kill_all = node.kill_all_processes

        def without_grace(
            check_alive: bool = True, allow_graceful: bool = False, wait: bool = False
        ):
            kill_all(check_alive=check_alive, allow_graceful=False, wait=wait)

        node.kill_all_processes = without_grace
    ray.shutdown()


def _shutdown_in_background() -> None:
    thread = threading.Thread(target=_shutdown_now, name="ray-shutdown")
    thread.start()
    _shutting_down.append(thread)


def wait_for_ray_shutdown() -> None:
    """Wait until a Ray instance this process is ending (after a finished dispatch) is gone."""
    while _shutting_down:
        _shutting_down.pop().join()


def _check_mps(plan: SweepPlan) -> None:
    """``ray.mps`` needs the control binary and an embedded instance (RAY_ADDRESS may name a
    cluster the config did not); one line otherwise."""
    check_mps_available()
    if plan.ray.resolved_address() != "local":
        raise ConfigError(
            f"ray.mps=true starts the MPS daemon for an embedded Ray instance only; this sweep "
            f"joins {plan.ray.resolved_address()} (RAY_ADDRESS): start it on each node before `ray start`"
        )


@contextmanager
def _mps(plan: SweepPlan, log: Callable[[str], None]) -> Iterator[None]:
    """The MPS daemon around the embedded instance when ``ray.mps``; nothing otherwise."""
    if not plan.ray.mps:
        yield
        return
    if ray.is_initialized():
        log("warning: ray.mps: Ray was already running here; its workers do not use the daemon")
    with mps_daemon(log):
        yield


@dataclass
class _Job:
    pack: list[Variant]
    deaths: int  # times a worker died while running this pack
    worker: int
    seq: int  # submission order


@dataclass
class _Worker:
    handle: Any
    ready: bool = False
    probe: Any = None  # ObjectRef of ready() while starting or restarting
    queue: deque = field(default_factory=deque)  # ObjectRefs of its packs, in submission order
    info: dict = field(default_factory=dict)


class _Dispatch:
    """Keeps every ready worker at most ``ray.max_in_flight`` packs deep, writes results as they
    come, and, when a worker dies, counts an attempt only against the pack it was running."""

    def __init__(
        self,
        plan: SweepPlan,
        store: Store,
        summary: SweepSummary,
        ids_of: dict[int, str],
        worker_cls: type,
        worker_kwargs: dict,
        log: Callable[[str], None],
    ):
        self.plan, self.store, self.summary, self.log = plan, store, summary, log
        self.ids_of = ids_of  # id(variant) -> variant_id, hashed once by the driver
        self.worker_cls, self.worker_kwargs = worker_cls, worker_kwargs
        self.show_progress = True
        self.on_pack: PackCallback | None = None  # called with each pack's rows once written
        self.workers: list[_Worker] = []
        self.queue: deque[tuple[list[Variant], int]] = deque()  # (pack, deaths), next first
        self.jobs: dict[Any, _Job] = {}  # in flight, by ObjectRef
        self.seq = 0

    def _start_workers(self, n: int) -> None:
        threads = max(1, math.floor(self.plan.ray.cpus_per_worker))
        actor = ray.remote(self.worker_cls).options(
            num_cpus=self.plan.ray.cpus_per_worker,
            num_gpus=self.plan.ray.gpus_per_worker,
            max_restarts=-1,  # a dead worker process comes back (here or on another node)
        )
        args = (self.plan.device, threads)
        self.workers = [_Worker(actor.remote(*args, **self.worker_kwargs)) for _ in range(n)]
        for w in self.workers:
            self._probe(w)

    def run(self, scheduled: list[tuple[list[Variant], float]], n_workers: int) -> None:
        self._start_workers(n_workers)
        self.queue.extend((pack, 0) for pack, _ in scheduled)
        total = sum(len(p) for p, _ in scheduled)
        self.bar = progress_bar(total, len(scheduled), self.plan.name, self.show_progress, self.log)
        try:
            while self.queue or self.jobs:
                self._submit()
                for ref in self._wait():
                    self._handle(ref)
        finally:
            self.bar.close()
            for w in self.workers:
                ray.kill(w.handle)

    def run_inline(self, packs: list[list[Variant]]) -> None:
        """The packs one after another in this process, by the worker class's own ``run``
        (the rows a Ray worker returns); an error outside ``run_pack``'s own handling is
        recorded as a Ray task's would be (the pack ``failed``, with the error)."""
        threads = torch.get_num_threads()
        worker = self.worker_cls(
            self.plan.device, math.floor(self.plan.ray.cpus_per_worker), **self.worker_kwargs
        )
        ckpt = str(self.plan.checkpoint_dir) if self.plan.checkpoint_dir else None
        total = sum(len(p) for p in packs)
        self.bar = progress_bar(total, len(packs), self.plan.name, self.show_progress, self.log)
        try:
            for pack in packs:
                try:
                    tables = worker.run(pack, self.plan.metrics, ckpt)
                except Exception as exc:
                    if is_disk_full(exc):  # a checkpoint write: every later pack would fail
                        raise
                    error = _first_line(exc)
                    tables = failed_rows(pack, self.plan.metrics, error, self.plan.device).tables
                self._write(pack, tables)
        finally:
            self.bar.close()
            torch.set_num_threads(threads)  # the worker set its own

    def _submit(self) -> None:
        while self.queue:
            ready = [
                w for w in self.workers if w.ready and len(w.queue) < self.plan.ray.max_in_flight
            ]
            if not ready:
                return
            w = min(ready, key=lambda w: len(w.queue))
            pack, deaths = self.queue.popleft()
            ckpt = str(self.plan.checkpoint_dir) if self.plan.checkpoint_dir else None
            ref = w.handle.run.remote(pack, self.plan.metrics, ckpt)
            w.queue.append(ref)
            self.jobs[ref] = _Job(pack, deaths, self.workers.index(w), self.seq)
            self.seq += 1

    def _wait(self) -> list:
        """Every result or probe ready now (at least one), oldest submission first."""
        pending = list(self.jobs) + [w.probe for w in self.workers if w.probe is not None]
        while True:
            ready, _ = ray.wait(pending, num_returns=1, timeout=WAIT_LOG_S)
            if ready:
                break
            alive = sum(w.ready for w in self.workers)
            self.log(
                f"waiting: {len(self.jobs)} packs running, {len(self.queue)} queued, "
                f"{alive} of {len(self.workers)} workers up"
            )
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
        return sorted(ready, key=lambda r: self.jobs[r].seq if r in self.jobs else -1)

    def _handle(self, ref) -> None:
        probed = [w for w in self.workers if w.probe is not None and w.probe == ref]
        if probed:
            self._on_probe(probed[0], ref)
            return
        if ref not in self.jobs:  # queued behind a pack whose worker died: already queued again
            return
        job = self.jobs[ref]
        w = self.workers[job.worker]
        try:
            tables = ray.get(ref)
        except DIED as exc:
            self._on_death(w, exc)
            return
        except RayTaskError as exc:  # an error outside run_pack's own handling (e.g. data missing)
            if is_disk_full(exc.cause or exc):  # a checkpoint write: every later pack would fail
                raise exc.cause or exc from None
            error = _first_line(exc.cause or exc)
            tables = failed_rows(job.pack, self.plan.metrics, error, self.plan.device).tables
        del self.jobs[ref]
        w.queue.remove(ref)
        self._write(job.pack, tables)

    def _probe(self, w: _Worker) -> None:
        w.probe = w.handle.ready.remote(self.plan.variants[0], self.plan.metrics)

    def _on_probe(self, w: _Worker, ref) -> None:
        try:
            w.info = ray.get(ref)
        except DIED:  # died while starting: ask again (the actor restarts)
            self._probe(w)
            return
        ours = {
            "variant_id": self.plan.variants[0].variant_id,
            "metrics_id": metrics_id(self.plan.metrics),
        }
        theirs = {k: w.info.get(k) for k in ours}
        if theirs != ours:
            raise ConfigError(
                f"the worker on {w.info.get('host')} computes other ids than this driver ({theirs} there, {ours} "
                "here): its landscape code differs; install the same version on every node, or set "
                "ray.ship_code=true"
            )
        w.ready, w.probe = True, None

    def _on_death(self, w: _Worker, exc: Exception) -> None:
        """The worker's oldest pack was running (results come oldest first, and an actor runs
        its calls in order): it spends an attempt. The packs queued behind it go back to the
        queue as they were; their own failed results are not waited for."""
        self.summary.worker_deaths += 1
        index = self.workers.index(w)
        where = f"pid {w.info.get('pid', '?')} on {w.info.get('host', '?')}"
        self.log(f"worker {index} ({where}) died: {_first_line(exc)}")
        w.ready = False
        self._probe(w)
        running, *behind = [self.jobs.pop(ref) for ref in w.queue]
        w.queue.clear()
        self.queue.extendleft((job.pack, job.deaths) for job in reversed(behind))
        deaths = running.deaths + 1
        n = len(running.pack)
        if deaths < self.plan.ray.max_pack_attempts:
            self.log(
                f"a pack of {n} was running on it ({deaths} of {self.plan.ray.max_pack_attempts} attempts); it runs again"
            )
            self.queue.appendleft((running.pack, deaths))
            return
        self.log(f"a pack of {n} killed its worker {deaths} times; recorded as failed")
        error = f"worker died {deaths} times running this pack: {_first_line(exc)}"
        self._write(
            running.pack,
            failed_rows(running.pack, self.plan.metrics, error, self.plan.device).tables,
        )

    def _write(self, pack: list[Variant], tables: dict[str, list[dict]]) -> None:
        expected = sorted(self.ids_of[id(v)] for v in pack)
        got = sorted(r["variant_id"] for r in tables.get("runs", []))
        # a worker with other code: never write rows the driver cannot account for
        if got != expected:
            raise RuntimeError(
                f"a worker returned runs rows for {got}, not for its pack {expected}"
            )
        now = datetime.now(timezone.utc)
        for row in tables.get("runs", []):
            row["finished_at"] = now
            self.summary.counts[row["status"]] = self.summary.counts.get(row["status"], 0) + 1
        self.store.write_pack(tables)
        self._tell_tracker(tables)
        self.summary.ran += len(pack)
        self.bar.update(len(pack))  # one pack

    def _tell_tracker(self, tables: dict[str, list[dict]]) -> None:
        """The pack's rows to the tracker; one that fails is logged once and switched off (the
        Parquet store is the record)."""
        if self.on_pack is None:
            return
        try:
            self.on_pack(tables)
        except Exception as exc:  # a tracker's failure is not the sweep's
            self.log(f"tracker switched off after an error: {_first_line(exc)}")
            self.on_pack = None


class LineProgress:
    """Progress for a log file, not a terminal: a line every ``every`` packs (about twenty per
    sweep) and at the end, instead of tqdm's carriage returns."""

    def __init__(self, total: int, packs: int, name: str, log: Callable[[str], None]):
        self.total, self.packs, self.name, self.log = total, packs, name, log
        self.every = max(1, round(packs / 20))
        self.done = self.packs_done = 0
        self.t0 = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        self.packs_done += 1
        if self.packs_done % self.every and self.packs_done != self.packs:
            return
        took = time.perf_counter() - self.t0
        left = took / self.done * (self.total - self.done) if self.done else 0.0
        self.log(
            f"{self.name}: {self.done}/{self.total} variants ({self.packs_done}/{self.packs} "
            f"packs) in {took:.0f} s, about {left:.0f} s to go"
        )

    def close(self) -> None:
        pass


def progress_bar(total: int, packs: int, name: str, show: bool, log: Callable[[str], None]):
    """tqdm on a terminal; on anything else (a log file, a SLURM job's output) a line per N
    packs; nothing when ``show`` is off."""
    if show and not sys.stderr.isatty():
        return LineProgress(total, packs, name, log)
    return tqdm(total=total, unit="variant", disable=not show, desc=name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
