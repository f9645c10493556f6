"""Operations of the champion race test, importable by the processes it spawns."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml_model.errors import AmlSmearError

if TYPE_CHECKING:
    from tasks.store import Store


def run_operation(operation: tuple[str, str, Store]) -> tuple[str, str, str]:
    """Do one of promote VERSION / rollback / prune; returns (kind, tag, "ok" or the refusal's type)."""
    from tasks.registry import rollback_champion, set_champion
    from tasks.registry_admin import prune_models

    kind, argument, store = operation
    try:
        if kind == "promote":
            set_champion(store, argument, reason=f"op {argument}")
        elif kind == "rollback":
            rollback_champion(store)
        else:
            prune_models(store, keep_newest=int(argument))
    except (AmlSmearError, FileNotFoundError) as exc:
        return kind, argument, type(exc).__name__
    return kind, argument, "ok"
