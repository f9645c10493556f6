"""Report links for the Prefect UI: file paths locally, presigned URLs on S3 that open without credentials."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from aml_model.aggregate import RESEARCH_NOTE
from aml_model.report import report_name
from tasks.links import LINK_EXPIRY, LINK_EXPIRY_ENV, Link, index_link, reports_markdown, ui_link
from tasks.privacy import PATIENT_ID_KEY_ENV, prefect_patient_id
from tasks.report import index_url, report_url
from tasks.store import Store


def test_a_local_file_is_an_absolute_file_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = ui_link(Store("store"), "store/reports/index.html")
    assert link.url == f"file://{tmp_path}/store/reports/index.html" and link.expires_at is None
    assert link.expiry_note == ""


def test_an_s3_object_gets_a_presigned_url_that_a_browser_can_open(s3_bucket, monkeypatch):
    bucket, options = s3_bucket
    store = Store(f"s3://{bucket}/store", options)
    url = store.write_bytes(f"s3://{bucket}/store/reports/index.html", b"<html>report</html>")
    link = ui_link(store, url)
    assert link.url.startswith("http") and "Signature" in link.url
    assert link.expires_at == pytest.approx(
        datetime.now(UTC) + LINK_EXPIRY, abs=timedelta(minutes=1)
    )
    assert link.expiry_note == f"link expires {link.expires_at:%Y-%m-%d %H:%M} UTC"
    # Opened as a browser would: no credentials in the environment, only the URL.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with urllib.request.urlopen(link.url, timeout=10) as response:
        assert response.read() == b"<html>report</html>"

    monkeypatch.setenv(LINK_EXPIRY_ENV, "3600")
    hour = ui_link(store, url)
    assert hour.expires_at == pytest.approx(
        datetime.now(UTC) + timedelta(hours=1), abs=timedelta(minutes=1)
    )
    monkeypatch.setenv(LINK_EXPIRY_ENV, "0")
    assert ui_link(store, url) == Link(url), "0: no presigned link, the s3:// URL as it is"
    monkeypatch.setenv(LINK_EXPIRY_ENV, "700000")
    with pytest.raises(ValueError, match=LINK_EXPIRY_ENV):
        ui_link(store, url)


def test_reports_markdown_links_the_index_and_each_report(tmp_path, monkeypatch):
    monkeypatch.delenv(PATIENT_ID_KEY_ENV, raising=False)
    paths = Store(str(tmp_path / "store")).run("run-1").scoring("v1-abc")
    patients = pd.DataFrame(
        {"patient_id": ["P/1", "P2"], "call": ["AML_SUSPECTED", "NOT_SUSPECTED"]}
    )
    markdown = reports_markdown(paths, patients, index_link(paths))
    assert (
        report_url(paths, "P/1")
        == f"{tmp_path}/store/runs/run-1/scores/v1-abc/reports/{report_name('P/1')}.html"
    )
    assert (
        f"(file://{index_url(paths)})" in markdown
        and f"(file://{report_url(paths, 'P/1')})" in markdown
    )
    assert (
        "| P2 | NOT_SUSPECTED |" in markdown
        and RESEARCH_NOTE in markdown
        and "expire" not in markdown
    )


def test_pseudonymised_reports_markdown_links_only_the_index(tmp_path, monkeypatch):
    monkeypatch.setenv(PATIENT_ID_KEY_ENV, "k")
    paths = Store(str(tmp_path / "store")).run("run-1").scoring("v1-abc")
    patients = pd.DataFrame({"patient_id": ["MRN-1"], "call": ["AML_SUSPECTED"]})
    markdown = reports_markdown(paths, patients, index_link(paths))
    assert (
        "MRN-1" not in markdown and f"| {prefect_patient_id('MRN-1')} | AML_SUSPECTED |" in markdown
    )
    assert f"(file://{index_url(paths)})" in markdown


def test_temporary_credentials_presign_nothing_by_default_and_say_so_when_asked_to(
    s3_bucket, monkeypatch
):
    bucket, options = s3_bucket
    url = Store(f"s3://{bucket}/store", options).write_bytes(
        f"s3://{bucket}/store/reports/index.html", b"<html>report</html>"
    )
    # As an instance role or IRSA gives them: a key, a secret and a session token.
    temporary = {
        **options,
        "key": "testing",
        "secret": "testing",
        "token": "session-token-of-a-role",
    }
    monkeypatch.delenv(LINK_EXPIRY_ENV, raising=False)
    link = ui_link(Store(f"s3://{bucket}/store", temporary), url)
    assert link.url == url and link.expires_at is None
    assert (
        "the credentials are temporary" in link.expiry_note and LINK_EXPIRY_ENV in link.expiry_note
    )

    monkeypatch.setenv(LINK_EXPIRY_ENV, "3600")  # the deployment asks for links anyway
    signed = ui_link(Store(f"s3://{bucket}/store", temporary), url)
    assert "x-amz-security-token=" in signed.url.lower() and signed.carries_session_token
    assert "carries a session token" in signed.expiry_note
