import pandas as pd

from tasks.inputs import quarantined_inputs
from tasks.store import Store
from tasks.store_layout import RunPaths


def _run_with_quarantine(tmp_path, report: dict) -> RunPaths:
    paths = Store(str(tmp_path / "store")).run("r1")
    root = "/data/smears"
    paths.store.write_table(
        pd.DataFrame(
            {
                "source_uri": [
                    f"{root}/B/z.jpg",
                    f"{root}/A/y.jpg",
                    f"{root}/A/copy.jpg",
                    f"{root}/loose.jpg",
                ],
                "patient_id": ["B", "A", "A", ""],
                "reason": [
                    "empty file (0 bytes)",
                    "unsupported format GIF (supported: JPEG, PNG, TIFF, BMP)",
                    f"duplicate of {root}/A/x.jpg (same sha256) in patient A",
                    "image is not inside a patient folder",
                ],
            }
        ),
        paths.quarantine_table,
    )
    paths.store.write_json(paths.report, report)
    return paths


def test_quarantined_inputs_are_named_in_the_source_by_patient_then_name(tmp_path):
    paths = _run_with_quarantine(tmp_path, {"root": "/data/smears", "counts": {}})
    named = quarantined_inputs(paths.scoring("s1"))  # a scoring reads its run's quarantine
    assert named[["patient_id", "name"]].values.tolist() == [
        ["", "loose.jpg"],
        ["A", "A/copy.jpg"],
        ["A", "A/y.jpg"],
        ["B", "B/z.jpg"],
    ]
    # A duplicate's reason names its first copy the same way.
    assert named.loc[1, "reason"] == "duplicate of A/x.jpg (same sha256) in patient A"
    assert named.loc[3, "source_uri"] == "/data/smears/B/z.jpg"


def test_a_run_without_a_recorded_root_names_files_by_their_base_name(tmp_path):
    named = quarantined_inputs(_run_with_quarantine(tmp_path, {"counts": {}}))
    assert named["name"].tolist() == ["loose.jpg", "copy.jpg", "y.jpg", "z.jpg"]
    assert named.loc[1, "reason"] == "duplicate of /data/smears/A/x.jpg (same sha256) in patient A"
