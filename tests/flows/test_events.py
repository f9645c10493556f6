"""What a scoring sends to Prefect: an event per AML_SUSPECTED patient, read back from the server's
events API, and patient ids as the privacy setting says (tasks/privacy.py) in artifacts, logs and events."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from flows.parameters import ScoreOptions
from flows.score import score_smears
from tasks.events import PATIENT_AML_SUSPECTED
from tasks.privacy import PATIENT_ID_KEY_ENV, PSEUDONYMISE_ENV, prefect_patient_id
from tasks.store import Store
from tests.corpus import compose_patient_cohort
from tests.flows.prefect_events import flow_run_artifacts, flow_run_logs, read_events

# Ids that occur nowhere else in what a scoring sends (run ids, versions, hashes). The tiny model calls
# nearly every cell blast-like: the second patient has too few cells to be called AML_SUSPECTED.
SUSPECTED, NORMAL = "MRN-4711-ALPHA", "MRN-0815-BETA"


def _score(lmu_cells, root, task_runner, tiny_model_file):
    source = compose_patient_cohort(
        lmu_cells, root / "cohort", {SUSPECTED: (16, 0), NORMAL: (0, 6)}
    )
    store = str(root / "store")
    # new_only: the "new or changed patients" log line names every patient.
    state = score_smears.with_options(task_runner=task_runner)(
        source=str(source),
        store=store,
        new_only=True,
        return_state=True,
        options=ScoreOptions(
            model=str(tiny_model_file), min_cells=10, chunk_cells=16, explain=False
        ),
    )
    result = state.result()
    calls = {row["patient_id"]: row["call"] for row in result["patients"]}
    assert calls == {SUSPECTED: "AML_SUSPECTED", NORMAL: "INSUFFICIENT_CELLS"}, calls
    scoring = Store(store).run(result["run_id"]).scoring(result["score_id"])
    return state.state_details.flow_run_id, result, scoring


def _sent(flow_run_id) -> tuple[str, list]:
    """Everything the run's artifacts and log lines hold, as one text, and its AML_SUSPECTED events."""
    artifacts = flow_run_artifacts(flow_run_id)
    assert {"patient-calls", "cohort-overview", "patient-reports", "report-index"} <= {
        a.key for a in artifacts
    }
    logs = flow_run_logs(flow_run_id, "new or changed patients")
    events = read_events(PATIENT_AML_SUSPECTED, related_id=f"prefect.flow-run.{flow_run_id}")
    text = "\n".join(
        [
            *(f"{a.data} {a.description}" for a in artifacts),
            *logs,
            *(e.model_dump_json() for e in events),
        ]
    )
    return text, events


def test_an_aml_suspected_patient_emits_an_event_with_the_real_id(
    lmu_cells, tmp_path, task_runner, tiny_model_file, monkeypatch
):
    monkeypatch.delenv(PATIENT_ID_KEY_ENV, raising=False)
    flow_run_id, result, scoring = _score(lmu_cells, tmp_path, task_runner, tiny_model_file)
    text, events = _sent(flow_run_id)
    assert len(events) == 1, "one event per AML_SUSPECTED patient, none for the others"
    event = events[0]
    assert event.resource.id == f"aml-smear.patient.{SUSPECTED}"
    assert event.payload["patient_id"] == SUSPECTED and event.payload["call"] == "AML_SUSPECTED"
    assert (event.payload["run_id"], event.payload["score_id"]) == (
        result["run_id"],
        result["score_id"],
    )
    assert (
        event.payload["model_version"] == result["model_version"]
        and event.payload["n_scored"] == 16
    )
    assert event.payload["report"] == f"file://{scoring.root}/reports/index.html"
    related = {r.id: r.role for r in event.related}
    assert related[f"aml-smear.scoring.{result['run_id']}/{result['score_id']}"] == "scoring"
    assert related[f"prefect.flow-run.{flow_run_id}"] == "flow-run"
    assert SUSPECTED in text and NORMAL in text, "without a key the real ids are sent"
    # A pseudonym's shape, not the bare prefix: a flow run's random name such as "rapid-python" holds "pid-".
    assert re.search(r"\bpid-[0-9a-f]{16}\b", text) is None, (
        "without a key nothing is pseudonymised"
    )
    index = next(a for a in flow_run_artifacts(flow_run_id) if a.key == "report-index")
    assert index.data.endswith(f"(file://{scoring.root}/reports/index.html)"), index.data


def test_with_a_key_prefect_sees_only_keyed_hashes(
    lmu_cells, tmp_path, task_runner, tiny_model_file, monkeypatch
):
    monkeypatch.setenv(PATIENT_ID_KEY_ENV, "a-secret-of-the-lab")
    monkeypatch.setenv(PSEUDONYMISE_ENV, "1")
    flow_run_id, _, scoring = _score(lmu_cells, tmp_path, task_runner, tiny_model_file)
    hashed = {pid: prefect_patient_id(pid) for pid in (SUSPECTED, NORMAL)}
    text, events = _sent(flow_run_id)
    for real, pseudonym in hashed.items():
        assert real not in text, f"{real} was sent to Prefect"
        assert pseudonym in text and pseudonym.startswith("pid-") and len(pseudonym) == 20
    assert [e.payload["patient_id"] for e in events] == [hashed[SUSPECTED]]
    assert events[0].resource.id == f"aml-smear.patient.{hashed[SUSPECTED]}"
    # The run store keeps the real ids.
    patients = pd.read_parquet(scoring.patients_table)
    assert sorted(patients["patient_id"]) == sorted(hashed)
    cells = pd.read_parquet(scoring.cells_table)
    assert set(cells["patient_id"]) == set(hashed)


def test_pseudonymising_without_a_key_fails_before_anything_is_sent(monkeypatch):
    monkeypatch.delenv(PATIENT_ID_KEY_ENV, raising=False)
    monkeypatch.setenv(PSEUDONYMISE_ENV, "1")
    with pytest.raises(ValueError, match=PATIENT_ID_KEY_ENV):
        prefect_patient_id(SUSPECTED)
