"""Patient identifiers in what is sent to Prefect: the real ones, or a keyed hash.

Artifacts, log lines and events go into Prefect's database (and its UI, and anything an
automation forwards them to). With ``AML_SMEAR_PATIENT_ID_KEY`` set in the environment of the
process that runs the flow (the worker's, or ``aml-smear serve``'s), every patient id sent to
Prefect is replaced by ``pid-`` and the first 16 hex digits of HMAC-SHA256(key, patient id): the
same patient has the same pseudonym in every run under the same key, and nobody without the key
can compute it from a guessed id. The run store (tables, reports, ledger) keeps the real ids.

``AML_SMEAR_PSEUDONYMISE=1`` makes the setting mandatory: a flow that would send a patient id
without a key fails instead. Never put the key in a deployment's job variables: Prefect stores
those in its database too. Both are read (:class:`tasks.settings.PrivacySettings`) when ids are
about to be sent, so a process sees the environment it has then.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

import pandas as pd

from tasks.settings import PrivacySettings, variable

__all__ = [
    "PATIENT_ID_KEY_ENV",
    "PSEUDONYM_PREFIX",
    "PSEUDONYMISE_ENV",
    "prefect_cell_rows",
    "prefect_patient_id",
    "prefect_patient_ids",
    "prefect_patients_table",
    "pseudonymising",
]

PATIENT_ID_KEY_ENV = variable("patient_id_key")
PSEUDONYMISE_ENV = variable("pseudonymise")
PSEUDONYM_PREFIX = "pid-"
_HEX_DIGITS = 16  # 64 bits: no collision among a lab's patients, short enough to read out
# A shorter id is replaced only as a whole path component: "7" in "cell-17.jpg" would garble, not protect.
_MIN_ID_IN_NAME = 4


def _key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The pseudonyms' key in ``environ`` (``os.environ`` by default); None: ids pass unchanged.

    Raises:
        ValueError: AML_SMEAR_PSEUDONYMISE is set without AML_SMEAR_PATIENT_ID_KEY, or is not a boolean.
    """
    return PrivacySettings.read(environ).key


def _pseudonym(patient_id: str, key: bytes | None) -> str:
    if key is None:
        return str(patient_id)
    digest = hmac.new(key, str(patient_id).encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:_HEX_DIGITS]


def pseudonymising(environ: Mapping[str, str] | None = None) -> bool:
    """True when patient ids sent to Prefect are replaced by keyed hashes."""
    return _key(environ) is not None


def prefect_patient_id(patient_id: str, environ: Mapping[str, str] | None = None) -> str:
    """The patient id as Prefect may see it: itself, or ``pid-<HMAC-SHA256 prefix>`` with a key.

    Raises:
        ValueError: AML_SMEAR_PSEUDONYMISE is set without AML_SMEAR_PATIENT_ID_KEY.
    """
    return _pseudonym(patient_id, _key(environ))


def prefect_patient_ids(patient_ids: Iterable[str]) -> list[str]:
    """:func:`prefect_patient_id` of each id, in order (the environment read once)."""
    key = _key()
    return [_pseudonym(patient_id, key) for patient_id in patient_ids]


def prefect_patients_table(patients: pd.DataFrame) -> pd.DataFrame:
    """A copy of a per-patient table fit for Prefect: ids replaced when pseudonymising.

    ``patient_version`` (an unkeyed hash of the id and image URIs) is left out then: it would
    link the pseudonym back to a store's patient for anyone who can list the images.
    """
    if not pseudonymising():
        return patients.copy()
    return patients.assign(patient_id=prefect_patient_ids(patients["patient_id"])).drop(
        columns=["patient_version"], errors="ignore"
    )


def _pseudonymous_uri(uri: str, patient_id: str, pseudonym: str) -> str:
    """``uri`` with the patient id replaced: as a whole path component, and inside any component
    (``patient-12345/``, ``12345-cell.jpg``, an id holding ``/``) where it is at least
    :data:`_MIN_ID_IN_NAME` characters long."""
    if len(patient_id) >= _MIN_ID_IN_NAME:
        return uri.replace(patient_id, pseudonym)
    return "/".join(pseudonym if part == patient_id else part for part in uri.split("/"))


def prefect_cell_rows(rows: list[dict]) -> list[dict]:
    """Cell rows (``cell_id`` = ``<patient_id>:<hash>``, optional ``source_uri`` and ``patient_id``)
    fit for Prefect: copies, with the patient part of each replaced when pseudonymising."""
    key = _key()
    if key is None:
        return [dict(row) for row in rows]
    published = []
    for row in rows:
        patient_id, _, digest = str(row["cell_id"]).rpartition(":")
        pseudonym = _pseudonym(patient_id, key)
        row = {**row, "cell_id": f"{pseudonym}:{digest}"}
        if "patient_id" in row:
            row["patient_id"] = pseudonym
        if row.get("source_uri"):
            row["source_uri"] = _pseudonymous_uri(str(row["source_uri"]), patient_id, pseudonym)
        published.append(row)
    return published
