"""The types of the flows' parameters, and the checks every flow makes before it writes anything.

Prefect validates a flow's arguments against its signature (pydantic) before the flow's first line
runs: a value outside a ``Literal`` or a ``Field`` bound fails the flow run at once, with a state
message naming the parameter and what it accepts (``ParameterTypeError``), and nothing is written.
The deployments publish the same types as their parameter schema, so the Prefect server refuses
such a value already when a run is created. What a type cannot say (that a source exists) is
checked by :func:`require_existing` at the start of each flow, also before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import fsspec
from pydantic import Field

from aml_model.config import Recipe
from tasks import storage

__all__ = [
    "BackboneWeights",
    "ImageSize",
    "Layout",
    "Positive",
    "Precision",
    "Probability",
    "Recipe",
    "RunId",
    "Sha256",
    "SiteName",
    "TrainingPath",
    "require_existing",
]

#: Source layouts (tasks.discover.LAYOUTS).
Layout = Literal["auto", "patient", "class", "manifest"]
#: "auto" and the inference precisions (aml_model.inference.INFERENCE_PRECISIONS; a test keeps them equal).
Precision = Literal["auto", "float32", "bfloat16", "float16"]
#: Training paths of retrain-and-evaluate.
TrainingPath = Literal["cached", "plain"]

#: An integer of at least 1 (cells, epochs, batch and chunk sizes).
Positive = Annotated[int, Field(ge=1)]
#: A probability or fraction strictly between 0 and 1 (thresholds, cut-offs).
Probability = Annotated[float, Field(gt=0, lt=1)]
#: The side of the square model input, pixels: ResNet50 needs 32 at least.
ImageSize = Annotated[int, Field(ge=32, le=1024)]
#: A run id becomes a folder name under runs/: no '/', no leading '.'.
RunId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
#: A site name becomes a file name (aml_model.calibration.validate_site_name).
SiteName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
#: A sha256 digest, hexadecimal.
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
#: "imagenet", "none", or the path/URL of a weights file.
BackboneWeights = Annotated[str, Field(min_length=1)]


def require_existing(urls: Iterable[str], what: str, s3_endpoint_url: str | None = None) -> None:
    """Raise ``FileNotFoundError`` naming the parameter when any of ``urls`` does not exist.

    Args:
        urls: local paths or fsspec URLs (``s3://...``).
        what: the parameter's name, for the message ("source", "backbone_weights"...).
        s3_endpoint_url: S3-compatible endpoint for s3:// URLs.
    """
    for url in urls:
        fs, path = fsspec.core.url_to_fs(url, **storage.storage_options_for(url, s3_endpoint_url))
        if not fs.exists(path):
            message = f"{what} {url} does not exist"
            raise FileNotFoundError(message)
