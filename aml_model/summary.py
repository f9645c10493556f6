"""A plain-text description of a model: layer table and parameter counts."""

from __future__ import annotations

import keras

__all__ = ["count_parameters", "describe_model"]


def count_parameters(model: keras.Model) -> dict[str, int]:
    """Total, trainable and non-trainable parameter counts of ``model``."""
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    frozen = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return {"total": trainable + frozen, "trainable": trainable, "non_trainable": frozen}


def describe_model(model: keras.Model) -> str:
    """Layer table (name, type, output shape, parameters, trainable) and parameter counts."""
    rows = [("layer", "type", "output shape", "params", "trainable")]
    for layer in model.layers:
        shape = tuple(layer.output.shape) if hasattr(layer, "output") else ()
        rows.append(
            (
                layer.name,
                type(layer).__name__,
                str(shape),
                f"{layer.count_params():,}",
                str(layer.trainable),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"model: {model.name}"]
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    counts = count_parameters(model)
    lines += [
        "",
        f"total params: {counts['total']:,}",
        f"trainable params: {counts['trainable']:,}",
        f"non-trainable params: {counts['non_trainable']:,}",
    ]
    return "\n".join(lines)
