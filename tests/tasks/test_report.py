import pandas as pd

from aml_model.aggregate import RESEARCH_NOTE
from tasks import storage
from tasks.registry import register_model
from tasks.report import index_url, model_info, report_url, reports_markdown


def test_model_info_has_the_cards_metrics_or_none_without_a_card(tmp_path):
    store = str(tmp_path / "store")
    model_file = tmp_path / "model.keras"
    model_file.write_bytes(b"not read here")
    metrics = {"n": 10, "threshold": 0.5, "roc_auc": 0.9}
    ref = register_model(str(model_file), {"config": {"model": {"image_size": 32}}, "metrics": metrics}, store)
    assert model_info(store, ref.version).metrics == metrics
    assert model_info(store, "file-0123456789ab").metrics is None


def test_reports_markdown_links_the_index_and_each_report(tmp_path):
    paths = storage.RunPaths(str(tmp_path / "store"), "run-1").scoring("v1-abc")
    patients = pd.DataFrame({"patient_id": ["P/1", "P2"], "call": ["AML_SUSPECTED", "NOT_SUSPECTED"]})
    markdown = reports_markdown(paths, patients)
    assert report_url(paths, "P/1") == f"{tmp_path}/store/runs/run-1/scores/v1-abc/reports/P_1.html"
    assert f"(file://{index_url(paths)})" in markdown and f"(file://{report_url(paths, 'P/1')})" in markdown
    assert "| P2 | NOT_SUSPECTED |" in markdown and RESEARCH_NOTE in markdown
    s3 = reports_markdown(storage.RunPaths("s3://bucket/store", "run-1").scoring("v1-abc"), patients)
    assert "(s3://bucket/store/runs/run-1/scores/v1-abc/reports/index.html)" in s3
