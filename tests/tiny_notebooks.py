"""A throwaway notebook for the driver's tests (lib.run.reproduce): a parameters cell and a body, python3 kernel."""
from __future__ import annotations

from pathlib import Path

import nbformat


def write_notebook(path: Path, parameters: str, body: str, title: str | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = ([nbformat.v4.new_markdown_cell(title)] if title else []) + [
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
