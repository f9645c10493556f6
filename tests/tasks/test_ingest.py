import hashlib
import json

from tasks.discover import CellInput
from tasks.ingest import plan_hash


def test_a_changed_cell_type_is_a_changed_input_and_untyped_plans_keep_their_hash():
    typed = [
        CellInput("s/MYO/1.jpg", "s", "blast", "myeloblast"),
        CellInput("s/NGS/2.jpg", "s", "normal", None),
    ]
    retyped = [CellInput("s/MYO/1.jpg", "s", "blast", "monoblast"), typed[1]]
    untyped = [CellInput("s/MYO/1.jpg", "s", "blast"), typed[1]]
    assert len({plan_hash(inputs, 224, 64) for inputs in (typed, retyped, untyped)}) == 3
    # Inputs without a type hash as before cell types existed: earlier runs keep their ids.
    legacy = json.dumps([["s/MYO/1.jpg", "s", "blast"], ["s/NGS/2.jpg", "s", "normal"], 224, 64])
    assert plan_hash(untyped, 224, 64) == hashlib.sha256(legacy.encode()).hexdigest()
