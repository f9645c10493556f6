from tasks.registry import register_model
from tasks.report import model_info
from tasks.store import Store
from tests.registry_fakes import stand_in_keras_file


def test_model_info_has_the_cards_metrics_or_none_without_a_card(tmp_path):
    store = Store(str(tmp_path / "store"))
    model_file = stand_in_keras_file(tmp_path / "model.keras")
    metrics = {"n": 10, "threshold": 0.5, "roc_auc": 0.9}
    ref = register_model(
        str(model_file), {"config": {"model": {"image_size": 32}}, "metrics": metrics}, store
    )
    assert model_info(store, ref.version).metrics == metrics
    assert model_info(store, "file-0123456789ab").metrics is None
