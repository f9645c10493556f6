"""New arrivals: a patient's version follows its image set, and the ledger remembers what a model scored."""

from __future__ import annotations

import pandas as pd

from tasks.arrivals import only_new, patient_versions, record_scored, scored_versions
from tasks.discover import CellInput, Discovery
from tasks.store import Store


def _found(
    images: dict[str, list[str]], rejected: dict[str, list[str]] | None = None, empty=()
) -> Discovery:
    inputs = [
        CellInput(uri=f"/smears/{p}/{name}", patient_id=p)
        for p, names in images.items()
        for name in names
    ]
    refused = [
        {"source_uri": f"/smears/{p}/{name}", "patient_id": p, "reason": "not an image"}
        for p, names in (rejected or {}).items()
        for name in names
    ]
    return Discovery(
        source="/smears",
        layout="patient",
        inputs=inputs,
        rejected=refused,
        empty_patients=list(empty),
    )


def test_a_version_changes_with_the_image_set_not_with_its_order():
    before = patient_versions(_found({"A": ["1.jpg", "2.jpg"], "B": ["1.jpg"]}))
    same = patient_versions(_found({"B": ["1.jpg"], "A": ["2.jpg", "1.jpg"]}))
    added = patient_versions(_found({"A": ["1.jpg", "2.jpg", "3.jpg"], "B": ["1.jpg"]}))
    refused = patient_versions(
        _found({"A": ["1.jpg", "2.jpg"], "B": ["1.jpg"]}, rejected={"B": ["x.txt"]})
    )
    assert same == before
    assert added["A"] != before["A"] and added["B"] == before["B"]
    assert refused["B"] != before["B"], "a refused input is part of the patient's image set"
    # The same file names under another patient are another version.
    assert before["A"] != patient_versions(_found({"C": ["1.jpg", "2.jpg"]}))["C"]
    assert set(patient_versions(_found({"A": ["1.jpg"]}, empty=["E"]))) == {"A", "E"}


def test_only_new_keeps_the_unscored_patients_with_their_refusals_and_empty_folders():
    found = _found(
        {"A": ["1.jpg"], "B": ["1.jpg", "2.jpg"]},
        rejected={"B": ["bad.jpg"], "A": ["x.txt"]},
        empty=["E"],
    )
    versions = patient_versions(found)
    restricted, new = only_new(found, versions, scored={versions["A"]})
    assert set(new) == {"B", "E"} and new["B"] == versions["B"]
    assert {c.patient_id for c in restricted.inputs} == {"B"} and len(restricted.inputs) == 2
    assert [r["patient_id"] for r in restricted.rejected] == [
        "B"
    ] and restricted.empty_patients == ["E"]


def test_the_ledger_records_a_scoring_once_and_answers_per_model(tmp_path):
    store = Store(str(tmp_path / "store"))
    scoring = store.run("run-1").scoring("m1-abc")
    patients = pd.DataFrame({"patient_id": ["A", "B"], "patient_version": ["va", "vb"]})
    url = record_scored(scoring, "m1", patients)
    assert scored_versions(store, "m1") == {"va", "vb"} and scored_versions(store, "m2") == set()
    # An entry already there is left as it is: a rerun does not rewrite it.
    assert record_scored(scoring, "m1", patients.iloc[:1]) == url
    assert scored_versions(store, "m1") == {"va", "vb"}
    record_scored(
        store.run("run-2").scoring("m1-def"),
        "m1",
        pd.DataFrame({"patient_id": ["C"], "patient_version": ["vc"]}),
    )
    assert scored_versions(store, "m1") == {"va", "vb", "vc"}
