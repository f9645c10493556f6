"""Operations of the champion race test, importable by the processes it spawns."""

from __future__ import annotations

from aml_model.errors import AmlSmearError


def run_operation(operation: tuple[str, str, str, dict]) -> tuple[str, str, str]:
    """Do one of promote VERSION / rollback / prune; returns (kind, tag, "ok" or the refusal's type)."""
    from tasks.registry import rollback_champion, set_champion
    from tasks.registry_admin import prune_models

    kind, argument, store, options = operation
    try:
        if kind == "promote":
            set_champion(store, argument, options, reason=f"op {argument}")
        elif kind == "rollback":
            rollback_champion(store, options)
        else:
            prune_models(store, keep_newest=int(argument), storage_options=options)
    except (AmlSmearError, FileNotFoundError) as exc:
        return kind, argument, type(exc).__name__
    return kind, argument, "ok"
