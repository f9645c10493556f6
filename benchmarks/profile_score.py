"""Where a warm ``score-smears`` run spends its time: a profile of the workers and of the flow process.

``python -m benchmarks.profile_score [--workers N] [--cells N] [--model FILE]`` scores held-out real
LMU cells twice on one LocalCluster (cold, then warm, as ``bench_score`` does) and prints, for the
warm run, against the model-only rate measured in the same process:

- the CPU seconds of each process: the flow's (which also runs the LocalCluster's scheduler),
  each worker's and the Prefect API server's;
- each worker's busy time and its timeline (Dask's task stream), and the compute time of each
  kind of task;
- the workers' statistical profile (Dask's ``Client.profile``): the share of samples spent in
  each of the project's functions, in TensorFlow's graph call, and in Prefect's task engine
  around the task functions.

Without ``--model`` it scores an untrained model of the default recipe (random backbone): a
forward pass costs the same whatever the weights, and this measures time, not accuracy. Not part
of ``make bench``; benchmarks/README.md ("Where end-to-end time goes") gives its figures.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from benchmarks.common import PROJECT_ROOT

#: Frames outside the project that the profile names, by (file suffix, function).
_LIBRARY_FRAMES = {
    ("tensorflow/python/eager/context.py", "call_function"): "TensorFlow graph call",
    ("prefect/task_engine.py", "run_task_sync"): "Prefect task engine, task function included",
    ("prefect/task_engine.py", "call_task_fn"): "Prefect task function",
    ("zarr/core/array.py", "__setitem__"): "Zarr write",
    ("zarr/core/array.py", "__getitem__"): "Zarr read",
}


def profile_shares(tree: Mapping, top: int = 12) -> list[tuple[str, float]]:
    """The share of a Dask statistical profile's samples spent in each function, callees included.

    ``tree`` is what ``Client.profile`` returns: nested nodes with ``description`` (filename,
    name), ``count`` and ``children``. A function on the stack twice counts once. Kept: the
    project's own functions and task functions (the ``top`` largest) and the library frames of
    :data:`_LIBRARY_FRAMES`, largest first. Dask samples its task threads only: work a task
    hands to threads of its own (decoding, Zarr's codecs) shows as the task's waiting.
    """
    cumulative: collections.Counter = collections.Counter()

    def walk(node: Mapping, on_stack: frozenset) -> None:
        name = _frame_name(node.get("description", {}))
        if name is not None and name not in on_stack:
            cumulative[name] += node["count"]
            on_stack = on_stack | {name}
        for child in node.get("children", {}).values():
            walk(child, on_stack)

    walk(tree, frozenset())
    total = tree.get("count") or 1
    library = set(_LIBRARY_FRAMES.values())
    own = [(name, count) for name, count in cumulative.most_common() if name not in library]
    kept = own[:top] + [(name, count) for name, count in cumulative.items() if name in library]
    return sorted(((name, count / total) for name, count in kept), key=lambda row: -row[1])


def _frame_name(description: Mapping) -> str | None:
    filename, function = description.get("filename", ""), description.get("name", "")
    for (suffix, name), label in _LIBRARY_FRAMES.items():
        if function == name and filename.endswith(suffix):
            return label
    if filename == "<dynamic-code>":  # Prefect's wrappers: the task function's, named after it
        return None if function == "wrapper_func" else f"task {function}"
    root = str(PROJECT_ROOT) + os.sep
    if function.startswith("<"):  # comprehensions: their function has the time already
        return None
    if filename.startswith(root) and not filename.startswith(root + ".venv"):
        return f"{filename[len(root) :]}:{function}"
    return None


def task_times(stream: Iterable[Mapping]) -> tuple[dict[str, float], dict[str, list]]:
    """Compute seconds per kind of task, and each worker's (start, stop, kind) spans, from a Dask
    task stream (``Client.get_task_stream``); times relative to the stream's first start."""
    from dask.utils import key_split

    records = list(stream)
    origin = min((s["start"] for r in records for s in r["startstops"]), default=0.0)
    per_kind: dict[str, float] = collections.defaultdict(float)
    spans: dict[str, list] = collections.defaultdict(list)
    for record in records:
        kind = key_split(record["key"])
        for step in record["startstops"]:
            if step["action"] == "compute":
                per_kind[kind] += step["stop"] - step["start"]
                spans[record["worker"]].append(
                    (step["start"] - origin, step["stop"] - origin, kind)
                )
    return dict(per_kind), {worker: sorted(s) for worker, s in spans.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cells", type=int, default=1400)
    parser.add_argument("--model", help="a .keras file (default: an untrained default recipe)")
    args = parser.parse_args(argv)

    from flows.runner import WORKER_PROFILE_ENV, quiet_dask_logs, shared_prefect_api

    quiet_dask_logs()
    # Its workers' statistical profile is what this reports; workers started here run none by default.
    os.environ[WORKER_PROFILE_ENV] = "True"
    with tempfile.TemporaryDirectory(prefix="aml-smear-profile-") as folder, shared_prefect_api():
        work = Path(folder)
        model = args.model
        if model is None:
            from aml_model.config import ModelConfig
            from benchmarks.bench_night import tiny_model

            model = str(work / "untrained.keras")
            tiny_model(Path(model), image_size=ModelConfig().image_size)
        _profile(args.workers, args.cells, model, work)


def _profile(n_workers: int, n_cells: int, model_file: str, work: Path) -> None:
    import numpy as np
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from aml_model.config import PreprocessConfig
    from aml_model.inference import BatchScorer, inference_model
    from aml_model.io import load_model
    from aml_model.preprocess import decode_cell
    from benchmarks.bench_score import BATCH, _score_run, _timed, registered_in
    from benchmarks.common import (
        cpu_seconds,
        print_table,
        require_lmu_cells,
        run_processes,
        sample_cohort,
    )
    from flows.runner import local_cluster_kwargs
    from flows.score import score_smears

    cells = sample_cohort(require_lmu_cells(), work / "cohort", n_cells)
    model = load_model(model_file, compile=False)
    size = int(model.input_shape[1])
    images = np.stack(
        [decode_cell(f.read_bytes(), str(f), PreprocessConfig(image_size=size)) for f, _ in cells]
    )
    model_only, _, _ = _timed(BatchScorer(inference_model(model, "float32"), BATCH), images)
    store = work / "store"
    version = registered_in(model_file, store)
    with (
        LocalCluster(**local_cluster_kwargs(n_workers)) as cluster,
        Client(cluster) as client,
    ):
        flow = score_smears.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )
        _score_run(flow, work / "cohort", store, version, "cold", "float32")
        processes = run_processes(client)
        cpu = cpu_seconds(processes)
        started = time.time()
        client.get_task_stream(start=started)  # the first call starts the scheduler's recording
        warm, _ = _score_run(flow, work / "cohort", store, version, "warm", "float32")
        stopped = time.time()
        cpu = {name: seconds - cpu[name] for name, seconds in cpu_seconds(processes).items()}
        per_kind, spans = task_times(client.get_task_stream(start=started))
        shares = profile_shares(client.profile(start=started, stop=stopped))
    wall = stopped - started
    rows = [
        ("model only fp32 (same process, preloaded cells)", f"{model_only:.1f} cells/s"),
        (
            f"score-smears fp32, {n_workers} worker(s), warm",
            f"{warm:.1f} cells/s = {warm / model_only:.2f}x model only; {wall:.1f} s",
        ),
    ]
    rows += [(f"CPU s, {name}", f"{seconds:.1f}") for name, seconds in cpu.items()]
    rows += [
        (f"busy s, worker {worker}", f"{sum(b - a for a, b, _ in s):.1f} of {wall:.1f}")
        for worker, s in spans.items()
    ]
    rows += [
        (f"compute s, {kind}", f"{seconds:.2f}")
        for kind, seconds in sorted(per_kind.items(), key=lambda kv: -kv[1])
        if seconds >= 0.05
    ]
    rows += [(f"worker samples, {name}", f"{share:.1%}") for name, share in shares]
    print_table(f"profile of a warm score-smears run over {len(cells)} real LMU cells", rows)
    for worker, s in spans.items():
        print(f"\ntimeline of worker {worker} (s from the first task; tasks over 0.3 s)")
        print("  " + ", ".join(f"{a:.1f}-{b:.1f} {kind}" for a, b, kind in s if b - a > 0.3))


if __name__ == "__main__":
    main()
