"""The commit an installed copy was built from, recorded at build time where there is no .git.

The worker images copy the code without its git history, so :func:`tasks.registry.code_version`
cannot ask git. Their build runs ``python -m tasks.build_info "$AML_SMEAR_COMMIT"`` (a build
argument: ``git rev-parse HEAD``, with ``-dirty`` appended for a checkout with changes) before the
package is installed, which writes ``tasks/build_commit.txt`` into the package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["BUILD_COMMIT_FILE", "read_build_commit", "write_build_commit"]

BUILD_COMMIT_FILE = Path(__file__).with_name("build_commit.txt")
_FORMAT = re.compile(r"([0-9a-f]{40})(-dirty)?")


def write_build_commit(value: str, path: Path = BUILD_COMMIT_FILE) -> Path:
    """Record ``<40 hex digits>[-dirty]`` for the package being built.

    Raises:
        ValueError: the value is not a full commit id (an empty build argument included).
    """
    if not _FORMAT.fullmatch(value.strip()):
        message = (
            f"AML_SMEAR_COMMIT={value!r} is not a commit: build with --build-arg "
            f"AML_SMEAR_COMMIT=$(git rev-parse HEAD) (append -dirty for a checkout with changes)"
        )
        raise ValueError(message)
    path.write_text(value.strip() + "\n")
    return path


def read_build_commit(path: Path = BUILD_COMMIT_FILE) -> tuple[str, bool] | None:
    """(commit, dirty) as the build recorded them; None for a copy that no image build made."""
    try:
        match = _FORMAT.fullmatch(path.read_text().strip())
    except OSError:
        return None
    return (match.group(1), bool(match.group(2))) if match else None


if __name__ == "__main__":
    try:
        print(f"recorded {write_build_commit(sys.argv[1] if len(sys.argv) > 1 else '')}")
    except ValueError as exc:
        sys.exit(f"error: {exc}")
