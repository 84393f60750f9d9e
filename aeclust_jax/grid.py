"""Independent runs of a reproduction (models x datasets x seeds) spread over worker processes,
one device each (a GPU, or on a CPU-only machine one XLA host device).

    from aeclust_jax.grid import Task, run_tasks
    results = run_tasks([Task("mnist-cae-0", run_one, (cfg, run_dir)), ...], workers=2)

``workers=1`` runs the tasks one after another in this process. With ``workers=N`` each task runs
in one of N spawned processes; worker ``i`` gets GPU ``i mod n_gpus`` (several workers may share a
GPU: memory is then allocated as needed, not preallocated) or, on a CPU-only machine, one XLA host
device. Nothing else about a run changes, thread pools included, because their sizes change the
digits: XLA:CPU's convolutions (a conv net's parameters after 30 Adam steps differ in the 8th digit
on 1 core vs 2) and openTSNE (S1's t-SNE NMI 0.583 with 1 thread vs 0.593 with 2, same
embedding input). So a run gives the same numbers in a worker as alone (tested), and on a CPU-only
machine the N workers share the cores: the wall-time gain comes from what a single run leaves idle
(Python dispatch, single-threaded host steps). With many workers on a many-core GPU machine, the
host-side t-SNEs compete for the cores (12 workers x 16 threads made each t-SNE ~60x slower on the
H100 machine): prefer tsnecuda there (``--tsne-backend``).
Results come back in task order. When a task fails, the tasks not started yet are cancelled, the
running ones finish (their runs stay complete), and the error is raised with the worker's
traceback. On Ctrl-C (SIGINT to this process, or to its whole group from a terminal) the tasks not
started are cancelled, the running ones are interrupted, and KeyboardInterrupt is raised once
they have stopped; an interrupted run resumes from its checkpoints when the command is run again.

Why processes and not ``jax.distributed``: the runs share nothing, so a collective runtime has
nothing to do; a run per process keeps each run's numbers those of the run alone, and a failure
stays local. Across machines, ``--shard I/N`` runs the I-th of N equal shares of the planned runs
(e.g. one Slurm array task each); the same command without ``--shard`` then trains only what is
missing and gathers the table (docs/distributed.md).

    p = make_parser(...); grid.add_options(p)          # --workers N, --shard I/N
    groups = grid.shard(all_planned_groups, args.shard)  # before skipping complete runs
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any, Callable, Sequence

from aeclust_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Task:
    """One independent run: ``fn(*args)`` with a top-level (picklable) ``fn``; ``name`` is printed."""
    name: str
    fn: Callable[..., Any]
    args: tuple = ()


@dataclasses.dataclass(frozen=True)
class Slot:
    """What worker ``index`` runs on: its environment overrides (which device)."""
    index: int
    env: dict


def add_options(p) -> None:
    """Adds ``--workers N`` and ``--shard I/N`` to a reproduce parser."""
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once, each in its own process on one device (a GPU, or on "
                        "CPU one host device); runs that share an intermediate stay together")
    p.add_argument("--shard", metavar="I/N",
                   help="train only the I-th (0-based) of N equal shares of the runs, write no table "
                        "(several machines, e.g. a Slurm array); gather by rerunning without it")


def check_options(args) -> None:
    """Validates --workers / --shard (UsageError naming the option); prepares a pool's parent."""
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.shard is not None:
        parse_shard(args.shard)
    prepare(args.workers)


def parse_shard(spec: str) -> tuple[int, int]:
    """"I/N" -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard expects I/N (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise UsageError(f"--shard {spec}: I must be in 0..N-1")
    return i, n


def shard(items: Sequence, spec: str | None) -> list:
    """The share of ``items`` that ``--shard I/N`` asks for: every N-th item from the I-th. Give it
    the whole planned list (complete runs included), so every machine cuts the same shares."""
    if spec is None:
        return list(items)
    i, n = parse_shard(spec)
    return list(items)[i::n]


def runs_here(workers: int, n_tasks: int) -> bool:
    """Whether ``run_tasks`` runs ``n_tasks`` tasks in this process (one worker, or at most one
    task) rather than in worker processes, which load their own data and show no progress bars."""
    return workers == 1 or n_tasks <= 1


def say_shard_done(spec: str, what: str = "the table") -> None:
    """The line a ``--shard`` invocation ends with (it writes no table)."""
    print(f"shard {spec}: done; run the command without --shard to gather {what}")


def plan_slots(workers: int, *, gpus: Sequence[str] | None = None) -> list[Slot]:
    """The slot of each of ``workers`` processes. ``gpus``: the visible GPU ids (None or empty on a
    CPU machine)."""
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    slots = []
    for i in range(workers):
        if gpus:
            env = {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        else:
            flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                     if not f.startswith("--xla_force_host_platform_device_count")]
            env = {"XLA_FLAGS": " ".join(flags)}
        slots.append(Slot(i, env))
    return slots


def prepare(workers: int) -> None:
    """Call first in a command that will run ``workers`` > 1 processes: on a GPU the parent then
    does not preallocate the memory its workers need."""
    if workers > 1:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def visible_gpus() -> list[str]:
    """The GPU ids this process sees (CUDA_VISIBLE_DEVICES, else one per local GPU); [] on CPU.
    Starts JAX's backend without preallocating GPU memory (the workers need it)."""
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        return []
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    if jax.default_backend() != "gpu":
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env.split(",") if env else [str(i) for i in range(jax.local_device_count())]


_stopped = None       # in a worker: the pool's Event, set once the parent is interrupted


def _start_worker(queue, stopped) -> None:
    """Pool initializer: claims a slot and applies it (before JAX starts in this process). An idle
    worker ignores SIGINT (a Ctrl-C between runs would kill it mid-queue); ``_run_task`` takes it
    back while a run is on."""
    global _stopped
    slot: Slot = queue.get()
    os.environ.update(slot.env)
    _stopped = stopped
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_task(fn: Callable, args: tuple):
    """A task in a worker, interruptible by SIGINT (KeyboardInterrupt) while it runs. Once the
    parent or any worker's run was interrupted, a task already queued to a worker does not start."""
    if _stopped.is_set():                # set by _start_worker, which runs first
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return fn(*args)
    except KeyboardInterrupt:
        # a terminal's Ctrl-C reaches the workers and the parent at once: stop the queue here,
        # before this worker takes its next task (the parent may not have set it yet)
        _stopped.set()
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_tasks(tasks: Sequence[Task], workers: int = 1, *,
              log: Callable[[str], None] = print,
              on_result: Callable[[int, Any], None] | None = None) -> list:
    """Runs every task, ``workers`` at a time (see the module docstring); returns their results in
    task order. ``on_result(i, result)`` is called here as each task ``i`` finishes (e.g. to
    write the tables so far)."""
    tasks = list(tasks)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    n = len(tasks)
    if runs_here(workers, n):
        out = []
        for i, t in enumerate(tasks):
            log(f"[{i + 1}/{n}] {t.name}")
            out.append(t.fn(*t.args))
            if on_result is not None:
                on_result(i, out[-1])
        return out
    import concurrent.futures
    import multiprocessing
    workers = min(workers, n)
    ctx = multiprocessing.get_context("spawn")
    queue, stopped = ctx.Queue(), ctx.Event()
    not_ours = {c.pid for c in multiprocessing.active_children()}
    for slot in plan_slots(workers, gpus=visible_gpus()):
        queue.put(slot)
    results: list = [None] * n
    log(f"{n} runs on {workers} worker processes")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                                                initargs=(queue, stopped)) as pool:
        futures = {pool.submit(_run_task, t.fn, t.args): i for i, t in enumerate(tasks)}
        done = 0
        try:
            for f in concurrent.futures.as_completed(futures):
                i = futures[f]
                try:
                    results[i] = f.result()
                    done += 1
                    log(f"[{done}/{n}] {tasks[i].name}: done")
                    if on_result is not None:
                        on_result(i, results[i])
                except KeyboardInterrupt:
                    raise
                except BaseException:       # the run, or on_result with its result, failed
                    log(f"{tasks[i].name}: failed; runs not started are cancelled, running ones "
                        "finish")
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        except KeyboardInterrupt:
            # Ctrl-C (here, or a worker's run interrupted): start nothing more, interrupt the
            # running runs (also when the signal reached only this process; they stop within a
            # few steps, their checkpoints stay) and wait for them
            log("interrupted: runs not started are cancelled, running ones stop")
            stopped.set()
            for child in multiprocessing.active_children():
                if child.pid not in not_ours:
                    os.kill(child.pid, signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
