import json

import pytest

from tasks.registry import (
    MODEL_PREFIXES_ENV,
    ModelNotAllowedError,
    ModelNotFoundError,
    allow_model_file,
    register_model,
    resolve_model,
    set_champion,
)
from tasks.store import Store
from tests.registry_fakes import stand_in_keras_file


def card(image_size=32):
    return {"config": {"model": {"image_size": image_size}}, "metrics": {"roc_auc": 0.9}}


def test_missing_champion_says_how_to_train_one(tmp_path):
    with pytest.raises(ModelNotFoundError, match="aml-smear retrain SOURCE --store"):
        resolve_model("champion", Store(str(tmp_path)))


def test_register_promote_and_resolve(tiny_model_file, tmp_path):
    store = Store(str(tmp_path / "store"))
    ref = register_model(str(tiny_model_file), card(), store, extra_files={"roc_curve.png": b"png"})
    assert ref.image_size == 32
    folder = tmp_path / "store" / "models" / ref.version
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.keras",
        "model_card.json",
        "roc_curve.png",
    ]
    assert json.loads((folder / "model_card.json").read_text())["version"] == ref.version
    set_champion(store, ref.version)
    assert resolve_model("champion", store) == ref
    assert resolve_model(ref.version, store) == ref


@pytest.mark.reliability
def test_a_half_registered_version_cannot_become_champion(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes(str(tmp_path / "models" / "v1" / "model.keras"), b"partial")
    with pytest.raises(ModelNotFoundError, match="not completely registered"):
        set_champion(store, "v1")
    assert not (tmp_path / "models" / "champion.json").exists()
    with pytest.raises(
        ModelNotFoundError, match="model version v1 .* is not completely registered"
    ):
        resolve_model("v1", store)


def test_model_file_by_path_gets_a_content_version(tiny_model_file, tmp_path):
    store = Store(str(tmp_path))
    ref = resolve_model(str(tiny_model_file), store)
    assert ref.version.startswith("file-") and ref.image_size == 32
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelNotFoundError, match="not a Keras .keras model file"):
        resolve_model(str(tmp_path / "junk.keras"), store)
    with pytest.raises(ModelNotFoundError, match="neither a version registered"):
        resolve_model("v-does-not-exist", store)


def test_a_model_path_must_lie_under_the_store_or_an_allowed_prefix(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"))
    monkeypatch.delenv(MODEL_PREFIXES_ENV, raising=False)
    for folder in ("lab", "store/models/hand-copied"):
        (tmp_path / folder).mkdir(parents=True)
    named = stand_in_keras_file(tmp_path / "lab" / "named.keras")
    sibling = stand_in_keras_file(tmp_path / "lab" / "sibling.keras")
    inside = stand_in_keras_file(tmp_path / "store" / "models" / "hand-copied" / "model.keras")
    assert resolve_model(str(inside), store).url == str(inside)
    with pytest.raises(ModelNotAllowedError, match=f"add its folder to {MODEL_PREFIXES_ENV}"):
        resolve_model(str(named), store)
    (tmp_path / "lab" / "link.keras").symlink_to(named)
    (tmp_path / "store" / "models" / "link.keras").symlink_to(named)
    with pytest.raises(ModelNotAllowedError):
        resolve_model(
            str(tmp_path / "store" / "models" / "link.keras"), store
        )  # a link out of models/
    with pytest.raises(ModelNotFoundError, match="neither a version registered"):
        resolve_model("v-typo", store)  # a bare name is a missing version, not a refused path
    chained = f"{tmp_path}/store/models/../../lab/named.keras::memory://x"
    with pytest.raises(ModelNotAllowedError, match="chained fsspec URL"):
        resolve_model(chained, store)  # fsspec would open the first part, outside models/
    monkeypatch.chdir(tmp_path / "lab")
    with pytest.raises(ModelNotAllowedError):
        resolve_model("named.keras", store)  # a bare file name in the working folder is a path too
    (tmp_path / "lab" / "evil.h5").write_bytes(named.read_bytes())
    with pytest.raises(ModelNotAllowedError):
        resolve_model("evil.h5", store)
    with pytest.raises(ModelNotAllowedError):
        resolve_model("..", store)
    with pytest.raises(ModelNotAllowedError, match="comma"):
        allow_model_file(f"{tmp_path}/a,b.keras")

    allow_model_file(str(named))  # as the CLI does for the file its user named
    assert resolve_model(str(named), store).url == str(named)
    with pytest.raises(ModelNotAllowedError):
        resolve_model(str(sibling), store)
    monkeypatch.setenv(MODEL_PREFIXES_ENV, f"s3://lab-models/approved, {tmp_path / 'lab'}")
    assert resolve_model(str(sibling), store).url == str(sibling)
