"""The wheel ships what the code reads at run time: templates, migrations and the built-in models."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_templates_migrations_and_models(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("prompt_tracker-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {str(p.relative_to(REPO / "templates")) for p in (REPO / "templates").rglob("*")
                 if p.is_file() and not p.name.startswith(".")}
    migrations = {p.name for p in (REPO / "migrations" / "versions").glob("*.py")}
    assert templates and {f"tracker/_templates/{t}" for t in templates} <= names
    assert "tracker/_templates/studio/studio.js" in names  # the studio's pages and script too
    assert "tracker/_migrations/env.py" in names
    assert {f"tracker/_migrations/versions/{m}" for m in migrations} <= names
    for model in ("tiny", "shapes"):
        assert f"tracker/models/{model}/model_index.json" in names
        assert f"tracker/models/{model}/unet/diffusion_pytorch_model.safetensors" in names
    assert not any(n.endswith((".bin", ".ckpt", ".pt")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tracker = tracker.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
