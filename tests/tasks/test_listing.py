import pandas as pd
import pytest

from tasks.arrivals import patient_versions
from tasks.discover import NoImagesError, discover
from tasks.ingest import INPUT_COLUMNS, plan_hash, read_inputs
from tasks.listing import list_source
from tasks.store import Store
from tests.conftest import upload_folder
from tests.corpus import compose_patient_cohort


@pytest.fixture
def cohort(lmu_cells, tmp_path):
    root = compose_patient_cohort(
        lmu_cells, tmp_path / "cohort", {"A": (3, 2), "B": (0, 4), "C": (2, 2)}
    )
    (root / "E").mkdir()
    (root / "A" / "notes.txt").write_text("not an image")
    with open(root / "labels.csv", "a") as labels:  # the last row of an image wins
        labels.write(f"B/{sorted((root / 'B').iterdir())[0].name},odd\n")
    return root


def test_a_listing_holds_counts_and_its_table_holds_every_input_in_slot_order(cohort, tmp_path):
    store = Store(str(tmp_path / "store"))
    found = discover(Store(str(cohort)))
    url = store.path("_staging", "one", "inputs.parquet")
    listing = list_source(Store(str(cohort)), "auto", store, url, 32, 2, 4)
    assert not hasattr(listing, "inputs"), "the flow's listing holds no entry per input"
    assert listing.n_inputs == len(found.inputs) == 12  # B's refused image is not an input
    assert listing.fingerprint == plan_hash(found.inputs, 32, 2)
    assert listing.versions == patient_versions(found)
    assert (listing.rejected, listing.ignored) == (found.rejected, found.ignored)
    assert listing.empty_patients == ["E"] and listing.first_patient == "A"
    expected = pd.DataFrame(
        [(c.uri, c.patient_id, c.label, c.cell_type) for c in found.inputs],
        columns=list(INPUT_COLUMNS),
    )
    table = store.read_table(url)
    pd.testing.assert_frame_equal(table, expected)
    # One row group per shard of 4 inputs; any slot range reads the same rows as a slice.
    for start, stop in [(0, 4), (4, 8), (8, 12), (2, 11), (0, 12), (11, 12)]:
        pd.testing.assert_frame_equal(
            read_inputs(store, url, start, stop), expected.iloc[start:stop].reset_index(drop=True)
        )


def test_only_new_patients_are_listed_and_a_source_without_images_writes_nothing(
    cohort, tmp_path, lmu_cells
):
    store = Store(str(tmp_path / "store"))
    versions = patient_versions(discover(Store(str(cohort))))
    store.write_json(
        f"{store.ledger}/m1/r.s.json",
        [{"patient_id": "A", "patient_version": versions["A"]}],
    )
    url = store.path("_staging", "two", "inputs.parquet")
    listing = list_source(Store(str(cohort)), "auto", store, url, 32, 2, 4, new_for="m1")
    assert set(listing.versions) == {"B", "C", "E"}
    assert set(store.read_table(url)["patient_id"]) == {"B", "C"}
    assert listing.n_inputs == 7  # B: 3 (one refused for its label), C: 4

    empty = tmp_path / "empty"
    (empty / "P").mkdir(parents=True)
    (empty / "P" / "readme.txt").write_text("no cells here")
    nothing = store.path("_staging", "three", "inputs.parquet")
    with pytest.raises(NoImagesError, match="none an image"):
        list_source(Store(str(empty)), "auto", store, nothing, 32, 2, 4)
    assert not store.exists(nothing)


def test_an_object_store_is_read_without_a_listings_cache(lmu_cells, tmp_path, s3_bucket):
    """A long-lived worker must see what another process wrote since it last listed a folder."""
    import s3fs

    bucket, options = s3_bucket
    root = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (1, 1)})
    source = Store(f"s3://{bucket}/smears", options)
    upload_folder(root, source)
    assert len(discover(source).inputs) == 2
    other = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    image = next((root / "A").iterdir())
    other.pipe_file(f"{bucket}/smears/A/late.jpg", image.read_bytes())
    late = f"s3://{bucket}/smears/A/late.jpg"
    assert source.exists(late) and source.read_bytes(late) == image.read_bytes()
    assert len(discover(source).inputs) == 3
