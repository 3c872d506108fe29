"""Independent pieces of work (training seeds, checkpoints of a probe sweep) run one after the other in this
process, or as Ray tasks on a local Ray instance or a cluster.

    results = run_tasks(fn, items, backend="ray")          # [fn(item) for item in items], in the items' order

Ray is an optional extra (`pip install "reward-workbench[ray]"`). `ray.init` with no address joins the cluster
named by RAY_ADDRESS or the one `ray start --head` started on this machine, and otherwise starts a local instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from workbench.common.errors import ConfigError, WorkbenchError, unknown_name

BACKENDS = ("local", "ray")


def run_tasks(
    fn: Callable,
    items: Iterable,
    backend: str = "local",
    num_cpus_per_task: float = 1,
    address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    shared: dict | None = None,
    num_gpus_per_task: float = 0,
) -> list:
    """`[fn(item, **shared) for item in items]`, locally in order or as Ray tasks (results in the items' order).

    fn must be importable by name (a module-level function; Ray workers import it). `shared` holds large objects
    every task reads (a dataset, label arrays): on Ray they go to the object store once instead of once per task.
    `progress(done, total)` is called as each task finishes. A failed task raises its own error when it is a
    WorkbenchError, otherwise a WorkbenchError naming the task; on Ray the tasks not yet finished are cancelled."""
    items, shared = list(items), dict(shared or {})
    report = progress or (lambda done, total: None)
    if backend == "local":
        results = []
        for index, item in enumerate(items):
            try:
                results.append(fn(item, **shared))
            except WorkbenchError:
                raise
            except Exception as err:
                raise _task_error(index, items, err) from err
            report(index + 1, len(items))
        return results
    if backend != "ray":
        raise unknown_name("backend", backend, BACKENDS)
    ray = connect(address)
    remote = ray.remote(num_cpus=num_cpus_per_task, num_gpus=num_gpus_per_task, max_retries=0)(_call)
    shared_refs = {name: ray.put(value) for name, value in shared.items()}  # top-level refs: Ray resolves them
    refs = [remote.remote(fn, item, **shared_refs) for item in items]
    index_of = {ref: index for index, ref in enumerate(refs)}
    results, waiting = [None] * len(refs), list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        for ref in ready:
            try:
                results[index_of[ref]] = ray.get(ref)
            except ray.exceptions.RayError as err:
                for other in waiting:
                    ray.cancel(other)
                cause = getattr(err, "cause", None)
                if isinstance(cause, WorkbenchError):
                    raise cause from err
                raise _task_error(index_of[ref], items, cause or err) from err
        report(len(refs) - len(waiting), len(refs))
    return results


def _call(fn: Callable, item, **shared):
    return fn(item, **shared)


def _task_error(index: int, items: list, err: BaseException) -> WorkbenchError:
    described = repr(items[index])
    described = described if len(described) <= 80 else described[:77] + "..."
    return WorkbenchError(f"task {index + 1} of {len(items)} ({described}) failed: {type(err).__name__}: {err}")


def connect(address: str | None = None):
    """The `ray` module, initialised: joined to the cluster at `address` (or RAY_ADDRESS, or the one started on
    this machine with `ray start --head`), else a fresh local instance. Already initialised: left as it is."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            'backend "ray" needs Ray, an optional extra: pip install "reward-workbench[ray]" (or use --backend local).'
        ) from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, ignore_reinit_error=True)
        except ConnectionError as err:
            raise ConfigError(
                f"cannot reach a Ray cluster at {address!r} ({err}): start one with `ray start --head`, or check "
                "--ray-address / RAY_ADDRESS."
            ) from err
    return ray
