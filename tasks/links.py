"""Links to a scoring's reports that open from the Prefect UI: presigned on S3, file paths locally."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

from aml_model.aggregate import RESEARCH_NOTE
from aml_model.report import report_name
from tasks.privacy import prefect_patient_id, pseudonymising
from tasks.report import index_url, report_url
from tasks.settings import LinkSettings, variable
from tasks.store import Store, is_local
from tasks.store_layout import ScoringPaths

__all__ = [
    "LINK_EXPIRY",
    "LINK_EXPIRY_ENV",
    "Link",
    "index_link",
    "link_expiry",
    "reports_markdown",
    "ui_link",
]

# SigV4 presigned URLs live at most 7 days; a report is looked at within days of its scoring.
LINK_EXPIRY = timedelta(days=7)
# Seconds a presigned link lives (1 to 604800); 0 presigns nothing: S3 links stay s3:// URLs.
LINK_EXPIRY_ENV = variable("link_expiry_seconds")  # tasks.settings.LinkSettings parses it


@dataclass(frozen=True)
class Link:
    """A URL a browser can open, and when it stops working (None: never)."""

    url: str
    expires_at: datetime | None = None
    carries_session_token: bool = False
    unsigned_because: str | None = None

    @property
    def expiry_note(self) -> str:
        """ "link expires ..." for an artifact's description (saying when the link carries a session
        token, or why it was not presigned), or "" for a link that does not expire."""
        if self.unsigned_because:
            return self.unsigned_because
        if self.expires_at is None:
            return ""
        note = f"link expires {self.expires_at:%Y-%m-%d %H:%M} UTC"
        if self.carries_session_token:
            note += (
                ", or earlier with the temporary credentials that signed it: it carries a session token, "
                "which anyone holding the link can read"
            )
        return note


def _expiry_chosen() -> bool:
    return LinkSettings.read().link_expiry_seconds is not None


def link_expiry() -> timedelta:
    """How long presigned links live: ``AML_SMEAR_LINK_EXPIRY_SECONDS``, 7 days by default (0: not presigned).

    Raises:
        ValueError: the setting is not a whole number of seconds from 0 to 604800 (7 days, S3's limit).
    """
    seconds = LinkSettings.read().link_expiry_seconds
    return LINK_EXPIRY if seconds is None else timedelta(seconds=seconds)


def ui_link(store: Store, url: str, expires_in: timedelta | None = None) -> Link:
    """A link to ``url``, on ``store``'s filesystem, for the Prefect UI.

    A local file becomes ``file://<absolute path>`` (it opens on the machine holding the store);
    an object on S3 (or MinIO) a presigned HTTPS URL valid for ``expires_in`` (default
    :func:`link_expiry`), signed with the credentials of the process that calls this: the URL
    carries the access key id, never the secret key. Any other store, or an expiry of 0, keeps
    the URL unchanged. Temporary credentials (an instance role, IRSA: a session token) would put
    their token in the URL: then nothing is presigned unless ``AML_SMEAR_LINK_EXPIRY_SECONDS`` (or
    ``expires_in``) asks for links, and such a link says that it carries the token.
    """
    explicit, expires_in = expires_in, link_expiry() if expires_in is None else expires_in
    fs, path = store.resolve(url)
    if is_local(fs):
        return Link("file://" + os.path.abspath(path))
    if not expires_in:
        return Link(url)
    try:
        signed = fs.sign(path, expiration=int(expires_in.total_seconds()))
    except NotImplementedError:
        return Link(url)
    token = "x-amz-security-token=" in signed.lower()  # SigV4 or SigV2 spelling
    if token and explicit is None and not _expiry_chosen():
        return Link(
            url,
            unsigned_because=f"not presigned: the credentials are temporary (a session token would be "
            f"in the link); set {LINK_EXPIRY_ENV} to presign anyway",
        )
    return Link(signed, datetime.now(UTC) + expires_in, carries_session_token=token)


def reports_markdown(paths: ScoringPaths, patients: pd.DataFrame, index: Link) -> str:
    """Markdown for the ``patient-reports`` artifact: the cohort index and each patient's call and report.

    The reports' file names are the patient ids: when patient ids are pseudonymised
    (:mod:`tasks.privacy`), only the index is linked and each patient appears by pseudonym.
    """
    hidden = pseudonymising()
    lines = [
        f"# Patient reports: run {paths.run_id}, scoring {paths.score_id}",
        "",
        f"**{RESEARCH_NOTE}**",
        "",
        f"[Cohort index]({index.url})",
        "",
    ]
    if index.expires_at is not None:
        lines += [
            f"Links expire {index.expires_at:%Y-%m-%d %H:%M} UTC; the reports stay in the store at "
            f"`{index_url(paths)}`.",
            "",
        ]
    elif index.unsigned_because:
        lines += [
            f"Links are {index.unsigned_because}. The reports are in the store at `{index_url(paths)}`.",
            "",
        ]
    if hidden:
        lines += [
            "Patient ids are pseudonymised here; the reports, named by patient id, are linked from the "
            "cohort index.",
            "",
            "| patient | call |",
            "|---|---|",
        ]
        lines += [
            f"| {prefect_patient_id(row.patient_id)} | {row.call} |"
            for row in patients.itertuples()
        ]
        return "\n".join(lines)
    lines += ["| patient | call | report |", "|---|---|---|"]
    lines += [
        f"| {row.patient_id} | {row.call} | [{report_name(row.patient_id)}.html]"
        f"({ui_link(paths.store, report_url(paths, row.patient_id)).url}) |"
        for row in patients.itertuples()
    ]
    return "\n".join(lines)


def index_link(paths: ScoringPaths) -> Link:
    """The UI link of the scoring's cohort index page."""
    return ui_link(paths.store, index_url(paths))
