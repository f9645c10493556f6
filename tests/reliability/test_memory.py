"""A cohort larger than the worker's memory limit is ingested and scored chunk by chunk."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tasks.store import Store

pytestmark = pytest.mark.reliability

IMAGE_SIZE = 1024  # 3 MiB per stored cell
MEMORY_LIMIT = 1_600_000_000  # bytes; the worker's whole process, TensorFlow included


def pooling_model(path, image_size: int):
    """The paper's layer structure (resnet50 -> flatten -> dense -> blast_probability) with a
    pooling layer as its "backbone", so that scoring large cells costs memory, not compute."""
    import keras

    from aml_model.io import save_model

    keras.utils.set_random_seed(0)
    backbone_input = keras.Input((image_size, image_size, 3))
    backbone = keras.Model(
        backbone_input, keras.layers.AveragePooling2D(64)(backbone_input), name="resnet50"
    )
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Flatten(name="flatten")(backbone(inputs))
    x = keras.layers.Dense(4, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="blast_probability")(x)
    return save_model(keras.Model(inputs, outputs), path)


def flat_cells(root, n: int):
    """``n`` distinct small PNG cells of one patient: cheap to decode and to compress at any size."""
    import io

    from PIL import Image

    (root / "BIG").mkdir(parents=True)
    for i in range(n):
        pixels = np.full((64, 64, 3), 200, np.uint8)
        pixels[16:48, 16:48] = (i % 256, i // 256, 120)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (root / "BIG" / f"cell-{i:04d}.png").write_bytes(buffer.getvalue())
    return root


def _peak_rss(dask_worker) -> int:
    """The worker process's peak resident memory (VmHWM), bytes."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_cohort_larger_than_worker_memory_streams_through_one_worker(prefect_api, tmp_path):
    import dask
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.parameters import ScoreOptions
    from flows.score import score_smears

    model = pooling_model(tmp_path / "pooling.keras", IMAGE_SIZE)
    source = flat_cells(tmp_path / "cohort", 540)
    store = str(tmp_path / "store")
    # No pausing or spilling: the only guard left is the nanny, which kills the worker at 95% of
    # its limit. A worker that held the whole cohort would be killed; one that streams is not.
    with (
        dask.config.set(
            {
                "distributed.worker.memory.pause": False,
                "distributed.worker.memory.spill": False,
                "distributed.worker.memory.target": False,
            }
        ),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            memory_limit=MEMORY_LIMIT,
            dashboard_address=None,
            local_directory=str(tmp_path / "dask"),
            # No statistical profiler, as the flows' own clusters: on Python 3.11 its sampling
            # deadlocked this test's worker once (CPython gh-106883).
            config={"distributed.worker.profile.enabled": False},
        ) as cluster,
        Client(cluster.scheduler_address) as client,
    ):
        (pid_before,) = client.run(os.getpid).values()
        result = score_smears.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )(
            source=str(source),
            store=store,
            options=ScoreOptions(
                model=str(model),
                run_id="big",
                min_cells=10,
                chunk_cells=16,
                chunks_per_task=1,
                batch_size=2,
                explain=False,
            ),
        )
        (pid_after,) = client.run(os.getpid).values()
        (peak,) = client.run(_peak_rss).values()
    paths = Store(store).run("big")
    images = paths.store.open_cells_array(paths.cells_zarr)
    assert images.shape == (540, IMAGE_SIZE, IMAGE_SIZE, 3) and images.nbytes > MEMORY_LIMIT
    assert result["cells"] == 540 and not result["already_complete"]
    assert pid_after == pid_before, "the worker was killed for memory and restarted"
    assert peak < 0.95 * MEMORY_LIMIT < images.nbytes, f"peak {peak / 1e9:.2f} GB"
    probabilities = paths.store.read_table(paths.scoring(result["score_id"]).cells_table)[
        "probability"
    ].to_numpy()
    assert len(probabilities) == 540 and np.isfinite(probabilities).all()
