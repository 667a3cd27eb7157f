"""Where a pinion's time per workload goes: ``python -m bench.pinion_profile [-n N] [--reps R]``.

Queues N one-task workloads (``bench.tasks.noop``, as the drain does) in a temporary
CALIBER_HOME, then drains them with a :class:`caliber.pinion.loop.Pinion` run in this process,
its steps timed from the outside with ``time.perf_counter_ns`` (the product is not changed):

* ``claim``: the backend's claim (one transaction) and what it returns;
* ``verify``: the run-secret and attachment hashes checked;
* ``prepare``: the working folder and its attachments written;
* ``start``: the job handed to the waiting spare child, and the next spare forked;
* ``child``: from the job handed over to the Results read back (the child's own work);
* ``complete``: the Results and the workload's status stored (one transaction);
* ``look``: one whole look (``run_once``), the per-workload critical path;
* ``cpu pinion`` / ``cpu child``: CPU time (user + system) of the pinion per look, and of its
  children per workload: less disturbed than wall time when the machine is busy;
* ``faults pinion``: the pinion's page faults per look (a count, not ms): after each fork
  every page it writes is copied, as the spare child still shares it.

It also times the *fork floor*: ``fork`` + ``_exit`` + ``waitpid`` from this warm process, with
the pinion's modules imported, the least any fresh-process-per-workload design pays (with
``--floor N --server``: from a fresh interpreter holding only the child's modules, as the fork
server that forks Caliber's children does). Figures
are medians over every workload of every repetition (per-step samples, in milliseconds).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

STEPS = ("claim", "verify", "prepare", "start", "child", "complete", "look", "cpu pinion",
         "cpu child", "faults pinion")


def fork_floor(n: int, *, server: bool = False) -> list[float]:
    """Milliseconds per ``fork`` + ``os._exit(0)`` + ``waitpid``, n times, from this process
    with the pinion's modules imported, or (``server``) only the child's, as Caliber's fork
    server has them (call it in a fresh interpreter: nothing else may be loaded)."""
    import gc

    if server:
        import caliber.pinion.child  # what the fork server imports
    else:
        import caliber.pinion.loop  # noqa: F401  the pinion's modules, as a pinion has them

    out = []
    for _ in range(n):
        gc.freeze()
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def _timed(samples: dict[str, list[float]], step: str,
           fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            samples[step].append((time.perf_counter_ns() - t0) / 1e6)
    return wrapper


def _children_cpu() -> float:
    """Seconds of CPU (user + system) used by this process's children that were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drain(n: int, root: Path) -> dict[str, list[float]]:
    """Queue n workloads in a fresh home under ``root``, drain them with a timed Pinion."""
    os.environ["CALIBER_HOME"] = str(root)
    os.environ.setdefault("CALIBER_SECRET_KEY", "bench-profile-key-0123456789abcdef")
    from bench.caliber_side import PINION, one_task_workflow
    from caliber.pinion import loop
    from caliber.queue.registry import open_backend
    from caliber.queue.target import local_target

    for i in range(n):
        one_task_workflow(i).queue(pinion=PINION)
    samples: dict[str, list[float]] = {s: [] for s in STEPS}
    backend = open_backend(local_target())
    pinion = loop.Pinion(loop.PinionConfig(name=PINION, attempts=1, wait=0.0), backend)
    backend.claim = _timed(samples, "claim", backend.claim)  # type: ignore[method-assign]
    backend.complete = _timed(samples, "complete", backend.complete)  # type: ignore[method-assign]
    pinion.prepare = _timed(samples, "prepare", pinion.prepare)  # type: ignore[method-assign]
    pinion._start = _timed(samples, "start", pinion._start)  # type: ignore[method-assign]
    watched: dict[str, list[float]] = {"watch": [], "conclude": []}  # summed per look
    pinion._watch = _timed(watched, "watch", pinion._watch)  # type: ignore[method-assign]
    pinion._conclude = _timed(watched, "conclude", pinion._conclude)  # type: ignore[method-assign]
    verify = loop.verify
    loop.verify = _timed(samples, "verify", verify)  # type: ignore[assignment]
    children = _children_cpu()
    try:
        while True:
            t0, c0 = time.perf_counter_ns(), time.process_time_ns()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            if not pinion.run_once():
                break
            samples["child"].append(sum(watched["watch"]) - sum(watched["conclude"]))
            watched["watch"].clear()
            watched["conclude"].clear()
            samples["faults pinion"].append(
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            samples["look"].append((time.perf_counter_ns() - t0) / 1e6)
            samples["cpu pinion"].append((time.process_time_ns() - c0) / 1e6)
        pinion.close()
        samples["cpu child"].append((_children_cpu() - children) / n * 1000)
    finally:
        loop.verify = verify  # type: ignore[assignment]
        backend.close()
    summary = pinion.summary
    if summary.completed != n:
        raise RuntimeError(f"only {summary.completed} of {n} workloads completed: {summary}")
    return samples


def report(samples: dict[str, list[float]], floor: Sequence[float]) -> str:
    import statistics  # not at the top: it loads random, whose fork hook --floor --server must
    # not time

    lines = [f"{'step':<10} {'median ms':>10} {'p10':>8} {'p90':>8}"]
    rows = [(s, samples[s]) for s in STEPS if samples[s]] + [("fork floor", list(floor))]
    for name, values in rows:
        q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
        lines.append(f"{name:<10} {statistics.median(values):>10.3f} {q[0]:>8.3f} {q[-1]:>8.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pinion_profile",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=300, help="workloads per repetition")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (fresh queue each)")
    parser.add_argument("--floor", type=int, metavar="N",
                        help="only time the fork floor, N forks: print their median in ms")
    parser.add_argument("--server", action="store_true",
                        help="with --floor: fork from the child's modules only, as the fork "
                        "server does")
    args = parser.parse_args(argv)
    if args.floor:
        forks = sorted(fork_floor(args.floor, server=args.server))
        print(f"{forks[len(forks) // 2]:.6f}")
        return 0
    os.environ["NO_COLOR"] = "1"
    samples: dict[str, list[float]] = {s: [] for s in STEPS}
    floor: list[float] = []
    import tempfile

    with tempfile.TemporaryDirectory(prefix="caliber-profile-") as tmp:
        for rep in range(args.reps):
            floor += fork_floor(args.n)
            for step, values in drain(args.n, Path(tmp) / f"home-{rep}").items():
                samples[step] += values
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}; {args.reps} x {args.n} workloads")
    print(report(samples, floor))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
