"""Patient ids for Prefect: the real ones without a key, HMAC-SHA256 pseudonyms with one."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd
import pytest

from tasks.privacy import (
    PATIENT_ID_KEY_ENV,
    PSEUDONYMISE_ENV,
    prefect_patient_id,
    prefect_patients_table,
    pseudonymising,
)


def test_without_a_key_ids_pass_unchanged(monkeypatch):
    monkeypatch.delenv(PATIENT_ID_KEY_ENV, raising=False)
    monkeypatch.delenv(PSEUDONYMISE_ENV, raising=False)
    assert not pseudonymising()
    assert prefect_patient_id("MRN-1") == "MRN-1"
    table = pd.DataFrame({"patient_id": ["MRN-1"], "patient_version": ["ab"]})
    pd.testing.assert_frame_equal(prefect_patients_table(table), table)


def test_with_a_key_ids_are_keyed_hashes(monkeypatch):
    monkeypatch.setenv(PATIENT_ID_KEY_ENV, "k1")
    expected = "pid-" + hmac.new(b"k1", b"MRN-1", hashlib.sha256).hexdigest()[:16]
    assert pseudonymising() and prefect_patient_id("MRN-1") == expected
    assert prefect_patient_id("MRN-2") != expected, "another patient, another pseudonym"
    assert prefect_patient_id("MRN-1", {PATIENT_ID_KEY_ENV: "k2"}) != expected, (
        "another key, another pseudonym"
    )
    table = pd.DataFrame(
        {"patient_id": ["MRN-1"], "patient_version": ["ab"], "call": ["NOT_SUSPECTED"]}
    )
    shown = prefect_patients_table(table)
    assert shown.to_dict("records") == [{"patient_id": expected, "call": "NOT_SUSPECTED"}]
    assert table["patient_id"].tolist() == ["MRN-1"], "the caller's table is not changed"


def test_the_flag_without_a_key_refuses(monkeypatch):
    monkeypatch.delenv(PATIENT_ID_KEY_ENV, raising=False)
    monkeypatch.setenv(PSEUDONYMISE_ENV, "1")
    with pytest.raises(ValueError, match=PATIENT_ID_KEY_ENV):
        prefect_patient_id("MRN-1")
    monkeypatch.setenv(PSEUDONYMISE_ENV, "0")
    assert prefect_patient_id("MRN-1") == "MRN-1"
