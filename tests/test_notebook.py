"""examples/notebook.ipynb runs headless (nbclient, a kernel on this Python): every cell runs without an
error, and the grid cell's HTML shows the labelled images inline."""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import EXAMPLES, REPO

KERNEL = "prompt-tracker-test"


def _kernel(tmp_path) -> str:
    """A kernelspec running this interpreter (the venv's python) with this checkout first on the path."""
    folder = tmp_path / "jupyter" / "kernels" / KERNEL
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "prompt-tracker tests", "language": "python",
        "env": {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)},
    }))
    return str(tmp_path / "jupyter")


@pytest.mark.slow
def test_notebook_runs_and_shows_labelled_grids(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", _kernel(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRACKER_HOME", raising=False)
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    NotebookClient(nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(work)}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]

    grid = next(c for c in code if "grid" in c.metadata.get("tags", []))
    html = "".join(o.get("data", {}).get("text/html", "") for o in grid.outputs)
    assert html.count('src="data:image/png;base64,') == 4
    for label in ("oldest", "old", "plain", "young"):
        assert f'alt="{label} · seed: 1"' in html and f">{label}</th>" in html
    assert ">seed: 1</th>" in html
    assert (work / "notebook-home" / "tracker.db").is_file()
