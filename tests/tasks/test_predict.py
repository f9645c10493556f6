def test_auto_precision_is_resolved_per_worker_from_its_cpu_and_the_models_card(monkeypatch):
    import tasks.predict as predict
    from tasks.registry import ModelRef

    monkeypatch.setattr(predict, "_PRECISIONS", {})
    monkeypatch.setattr(predict, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    agreeing = ModelRef("file:///m.keras", "v-agree", 32, {"bfloat16": 0.004, "float16": 0.001})
    drifting = ModelRef("file:///m.keras", "v-drift", 32, {"bfloat16": 0.09, "float16": 0.001})
    unknown = ModelRef("file:///m.keras", "v-bare", 32)
    assert predict.worker_precision("auto", agreeing) == "bfloat16"
    assert predict.worker_precision("auto", drifting) == "float32"
    assert predict.worker_precision("auto", unknown) == "float32"
    assert predict.worker_precision("float16", drifting) == "float16"
    monkeypatch.setattr(predict, "_PRECISIONS", {})
    monkeypatch.setattr(predict, "cpu_flags", lambda: frozenset({"avx2"}))
    assert predict.worker_precision("auto", agreeing) == "float32"
