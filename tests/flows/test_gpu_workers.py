"""A mixed CPU/GPU cluster, as the project starts one on a GPU host: model tasks go to the GPU workers.

No GPU is needed: the workers the spec pins to "GPU 0" advertise the resource, which is all that
Dask's placement reads; TensorFlow on them finds no device and computes on the CPU.
"""

import pandas as pd
from distributed import Client, SpecCluster, get_task_stream
from prefect_dask import DaskTaskRunner

from flows.parameters import ScoreOptions
from flows.runner import gpu_cluster_spec
from flows.score import score_smears
from tasks.store import Store
from tests.conftest import task_name
from tests.corpus import compose_patient_cohort


def test_scoring_runs_on_the_gpu_worker_and_decoding_anywhere(lmu_cells, tmp_path, tiny_model_file):
    spec = gpu_cluster_spec(2, ["0"])
    for options in (w["options"] for w in spec["workers"].values()):
        options["local_directory"] = str(tmp_path / "dask")
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (12, 12), "B": (12, 12)})
    store = str(tmp_path / "store")
    with SpecCluster(**spec, asynchronous=False) as cluster, Client(cluster) as client:
        devices = client.run(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"])
        resources = {a: w["resources"] for a, w in client.scheduler_info()["workers"].items()}
        (gpu_worker,) = [a for a, r in resources.items() if r.get("GPU") == 1]
        with get_task_stream(client) as stream:
            result = score_smears.with_options(
                task_runner=DaskTaskRunner(address=cluster.scheduler_address)
            )(
                source=str(source),
                store=store,
                options=ScoreOptions(
                    model=str(tiny_model_file), min_cells=10, chunk_cells=4, chunks_per_task=1
                ),
            )
    # The GPU worker sees only its device; the CPU worker sees none.
    assert sorted(devices.values()) == ["", "0"] and devices[gpu_worker] == "0"
    ran: dict[str, list[str]] = {}
    for record in stream.data:
        ran.setdefault(task_name(record["key"]), []).append(record["worker"])
    assert len(ran["score_shard"]) == 12 and set(ran["score_shard"]) == {gpu_worker}, ran
    assert len(ran["ingest_shard"]) == 12
    scored = pd.read_parquet(
        Store(store).run(result["run_id"]).scoring(result["score_id"]).cells_table
    )
    assert len(scored) == 48 and scored["probability"].notna().all()
