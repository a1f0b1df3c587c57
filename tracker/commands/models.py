"""``tracker models``: the built-in models, where they live and what they are for.

Pure listing from ``tracker.experiment.model_refs``: no torch or diffusers import, so it answers instantly.
"""

from __future__ import annotations

import json

import click


def builtin_models() -> list[dict]:
    """One dict per built-in model: name, folder, description, native size, whether the folder is there."""
    from tracker.experiment import families, model_refs as models

    out = []
    for name, description in models.BUILTIN.items():
        folder = models.builtin_path(name)
        installed = (folder / "model_index.json").is_file()
        size = "{}x{}".format(*families.facts_for(name).native_size) if installed else None
        out.append({
            "name": name, "path": str(folder), "description": description, "native_size": size,
            "installed": installed, "default": name == models.DEFAULT_MODEL,
        })
    return out


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per model.")
def models(as_json: bool) -> None:
    """List the built-in models (use their names as `model:` in an experiment file).

    Any other `model:` is a local folder saved with diffusers' save_pretrained, or a Hugging Face Hub id
    (downloaded ahead of time when HF_HUB_OFFLINE is set).
    """
    rows = builtin_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for r in rows:
        flags = [f for f, on in (("default", r["default"]), ("missing", not r["installed"])) if on]
        suffix = f" ({', '.join(flags)})" if flags else ""
        click.echo(f"{r['name']}{suffix}  {r['native_size'] or '-'}  {r['path']}")
        click.echo(f"    {r['description']}")
