"""The Ultralytics integration is explicit and reversible: importing sparseyolo changes nothing, `enable()` installs
it (plain Ultralytics then builds SparseYOLO YAMLs), `disable()` restores Ultralytics exactly. Each test runs in a
fresh process, where Ultralytics starts untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A snapshot of what the integration may touch: Ultralytics' parser module globals (names -> object ids),
# `ultralytics.nn`'s `parse_model`, sys.meta_path and the environment; `emit` prints a result for `run`.
SNAPSHOT = """
import json


def emit(value):
    print("@@" + json.dumps(value))


def snapshot():
    import os, sys
    out = {"meta_path": [repr(f) for f in sys.meta_path], "env": dict(os.environ)}
    tasks = sys.modules.get("ultralytics.nn.tasks")
    if tasks is not None:
        out["tasks"] = {k: id(v) for k, v in vars(tasks).items() if type(v).__name__ != "module"}
        out["nn.parse_model"] = id(sys.modules["ultralytics.nn"].parse_model)
    return out
"""


def run(script: str, tmp_path) -> list:
    """Run `script` in a fresh Python (no YOLO_* variables, its own cache); the JSON lines it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "SPARSEYOLO_"))}
    env.update(SPARSEYOLO_CACHE=str(tmp_path / "cache"), YOLO_VERBOSE="False", PYTHONPATH=str(ROOT))
    code = SNAPSHOT + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line[2:]) for line in proc.stdout.splitlines() if line.startswith("@@")]


@pytest.mark.parametrize("ultralytics_first", [False, True], ids=["sparseyolo first", "ultralytics first"])
def test_importing_sparseyolo_changes_nothing(tmp_path, ultralytics_first):
    first = "import ultralytics.nn.tasks" if ultralytics_first else ""
    before, after, loaded, tasks = run(
        f"""
        import sys
        {first}
        before = snapshot()
        import sparseyolo, sparseyolo.yolo, sparseyolo.nn, sparseyolo.settings
        after = snapshot()
        loaded = "ultralytics" in sys.modules
        from ultralytics.nn import tasks  # imported after sparseyolo: as Ultralytics made it
        emit(before); emit(after); emit(loaded)
        emit([hasattr(tasks, "SparseStem"), hasattr(tasks.parse_model, "__sparseyolo_original__")])
        """,
        tmp_path,
    )
    assert after == before
    assert loaded == ultralytics_first
    assert tasks == [False, False]
    assert not (tmp_path / "cache").exists()  # no directory made (Ultralytics' config dir), no font copied


def test_enable_installs_and_disable_restores_exactly(tmp_path):
    pristine, enabled, restored, checks = run(
        """
        import os, sys
        from ultralytics import YOLO
        import ultralytics.nn.tasks
        import sparseyolo
        from sparseyolo.yolo.cfg import CFG_DIR

        yaml = str(CFG_DIR / "yolov8n-sparse.yaml")
        YOLO("yolov8n.yaml")  # Ultralytics' own first-build effects (CUBLAS_WORKSPACE_CONFIG) come before
        try:
            YOLO(yaml)
        except KeyError as e:
            before_error = repr(e)
        pristine = snapshot()
        sparseyolo.enable()
        sparseyolo.enable()  # idempotent
        built = type(YOLO(yaml).model.model[0]).__name__
        enabled = snapshot()
        sparseyolo.disable()
        restored = snapshot()
        sparseyolo.disable()  # once is enough
        try:
            YOLO(yaml)
            after_error = None
        except KeyError as e:  # Ultralytics' own parser: the module name is unknown
            after_error = repr(e)
        sparseyolo.enable()  # the round trip
        again = type(YOLO(yaml).model.model[0]).__name__
        sparseyolo.disable()
        final = snapshot() == pristine
        emit(pristine); emit(enabled); emit(restored)
        emit([built, before_error, after_error, again, final, sparseyolo.enabled()])
        """,
        tmp_path,
    )
    built, before_error, after_error, again, final, still_enabled = checks
    assert built == again == "SparseStem"
    assert after_error == before_error == "KeyError('SparseStem')"
    assert enabled != pristine
    added = set(enabled["tasks"]) - set(pristine["tasks"])
    assert {"SparseStem", "SConv", "SC2f", "DFFNeck", "SparseDetect", "_sparseyolo_yaml_args"} <= added
    assert enabled["tasks"]["parse_model"] != pristine["tasks"]["parse_model"]
    assert enabled["nn.parse_model"] == enabled["tasks"]["parse_model"]
    assert {k: v for k, v in enabled["env"].items() if k not in pristine["env"]} == {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "False",
        "YOLO_CONFIG_DIR": str(tmp_path / "cache" / "ultralytics"),
    }
    assert restored == pristine
    assert final and not still_enabled


def test_enable_keeps_user_settings_and_sets_offline_defaults_first(tmp_path):
    """Enabled before Ultralytics loads, the offline defaults take effect (config dir, font); a variable the user
    set is neither changed nor removed by `disable()`."""
    (first,) = run(
        """
        import os, sys
        os.environ["YOLO_AUTOINSTALL"] = "True"
        import sparseyolo
        sparseyolo.enable()
        from ultralytics import YOLO
        from ultralytics.utils import USER_CONFIG_DIR
        from sparseyolo.yolo.cfg import CFG_DIR
        name = type(YOLO(str(CFG_DIR / "yolov8n-sparse.yaml")).model.model[0]).__name__
        out = [name, os.environ["YOLO_OFFLINE"], os.environ["YOLO_AUTOINSTALL"], str(USER_CONFIG_DIR),
               (USER_CONFIG_DIR / "Arial.ttf").is_file()]
        sparseyolo.disable()
        emit(out + [os.environ.get("YOLO_OFFLINE"), os.environ.get("YOLO_AUTOINSTALL")])
        """,
        tmp_path,
    )
    name, offline, autoinstall, config_dir, font, *after = first
    assert [name, offline, autoinstall, font, after] == ["SparseStem", "1", "True", True, [None, "True"]]
    assert config_dir.startswith(str(tmp_path / "cache" / "ultralytics"))


def test_building_or_loading_a_model_enables(tmp_path):
    """Building (`SparseDetectionModel`, `sparseyolo.YOLO`) and loading (unpickling a checkpoint) install it."""
    (flags,) = run(
        """
        import torch
        from sparseyolo.yolo import integration
        from sparseyolo.yolo.model import SparseDetectionModel
        out = [integration.enabled()]
        model = SparseDetectionModel("yolov8n-sparse.yaml", verbose=False)
        out.append(integration.enabled())
        torch.save(model, "m.pt")
        integration.disable()
        torch.load("m.pt", weights_only=False)
        out.append(integration.enabled())
        integration.disable()
        from sparseyolo.yolo.api import YOLO
        YOLO("yolov8n-sparse.yaml")
        out.append(integration.enabled())
        emit(out)
        """,
        tmp_path,
    )
    assert flags == [False, True, True, True]


def test_ddp_worker_file_enables_the_integration(tmp_path, tiny_data):
    """Ultralytics' DDP launcher writes a file that unpickles `type(trainer)` and the model and builds the trainer
    in a fresh process: the worker script generated here (training replaced by checks) must get the integration,
    from the trainer itself too (the state's unpickling, which also enables it, is undone before)."""
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    from sparseyolo.threads import threads
    from sparseyolo.yolo import SparseDetectionModel, SparseDetectionTrainer

    model = SparseDetectionModel("yolov8n-sparse.yaml", nc=2, verbose=False)
    args = dict(model="yolov8n-sparse.yaml", data=str(tiny_data), epochs=1, imgsz=64, device="cpu")
    with threads(None):  # Ultralytics' CPU trainer sets the thread count; deterministic mode is slow on CPU
        trainer = SparseDetectionTrainer(overrides={**args, "project": str(tmp_path), "deterministic": False})
    trainer.model = model
    file = generate_ddp_file(trainer)
    try:
        script = open(file).read()
        assert 'trainer = state["trainer"](' in script and "trainer.train()" in script
        script = script.replace(
            'trainer = state["trainer"](',
            'from sparseyolo.yolo import integration; integration.disable()\n    trainer = state["trainer"](',
        )
        script = script.replace(
            "trainer.train()",
            "from ultralytics.nn import tasks\n"
            "    print(type(trainer).__name__, type(trainer.model).__name__, integration.enabled(),\n"
            "          tasks.SparseStem.__module__, hasattr(tasks.parse_model, '__sparseyolo_original__'))",
        )
        (tmp_path / "ddp_worker.py").write_text(script)
        env = {**os.environ, "YOLO_VERBOSE": "False", "PYTHONPATH": str(ROOT)}
        worker = [sys.executable, str(tmp_path / "ddp_worker.py")]
        proc = subprocess.run(worker, capture_output=True, text=True, env=env, cwd=tmp_path)
    finally:
        ddp_cleanup(trainer, file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SparseDetectionTrainer SparseDetectionModel True sparseyolo.nn.sparse_blocks True" in proc.stdout
