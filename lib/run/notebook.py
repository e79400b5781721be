"""The run context every notebook opens with: validated parameters, scale, device, seed, output folders.

    run = start_run("tour", dict(scale=scale, dataset=dataset, seed=seed, device=device), DEFAULTS)
    run.save_figure(fig, "accuracy_vs_eps")   # figures/<scale>/tour/accuracy_vs_eps.{png,pdf}
    run.save_rows(rows, "accuracy_vs_eps")    # papermill_runs/<scale>/results/tour/accuracy_vs_eps.csv

The papermill driver points the output folders at a staging area ($PURIFY_FIGURES_DIR,
$PURIFY_RESULTS_DIR) and moves them into place only when the whole notebook succeeded.

The notebook's data parameters (`dataset`, `data_root`, `image_size`, `verify_checksums`; each optional) are
checked here, before any work (`lib.core.data.check_dataset`), and `data_root`, `image_size` and
`verify_checksums` become this process's data options (`lib.core.data.set_data_options`), so that every
loader, classifier and model spec the notebook reaches reads the same data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from lib.core.data import check_dataset, set_data_options
from lib.core.provenance import REPO, provenance
from lib.core.results import rows_frame, write_csv_atomic
from lib.core.settings import Scale, resolve_device, resolve_scale, seed_everything, validate_parameters


def figures_dir(scale: str, notebook: str) -> Path:
    return Path(os.environ.get("PURIFY_FIGURES_DIR") or REPO / "figures" / scale / notebook)


def results_dir(scale: str, notebook: str) -> Path:
    return Path(os.environ.get("PURIFY_RESULTS_DIR") or REPO / "papermill_runs" / scale / "results" / notebook)


@dataclass
class Run:
    notebook: str
    scale: Scale
    seed: int
    device: torch.device
    params: dict[str, Any]
    figures: Path
    results: Path
    provenance: dict = field(default_factory=dict)

    def save_figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as PNG and PDF; returns the PNG path."""
        self.figures.mkdir(parents=True, exist_ok=True)
        png = self.figures / f"{name}.png"
        fig.savefig(png, dpi=150, bbox_inches="tight")
        fig.savefig(self.figures / f"{name}.pdf", bbox_inches="tight")
        return png

    def save_rows(self, rows: list[dict] | pd.DataFrame, name: str) -> pd.DataFrame:
        """Keep result rows (or any table) as CSV next to the executed notebook; returns the frame."""
        frame = rows if isinstance(rows, pd.DataFrame) else rows_frame(rows)
        write_csv_atomic(frame, self.results / f"{name}.csv")
        return frame

    def header(self) -> str:
        p = self.provenance
        capped = (f" · DRY RUN capped at {self.scale.limit} batches (lib.core.dry_run): the numbers mean nothing"
                  if self.scale.limit else "")
        return (f"{self.notebook} · scale={self.scale.name}{capped} · seed={self.seed} · device={self.device} · "
                f"{p.get('hardware')} · torch {p.get('torch')} · git {p.get('git')} · {p.get('time')}")


def start_run(notebook: str, params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> Run:
    """Validate a notebook's parameters and data, set the data options, seed everything, prepare the output folders."""
    params = validate_parameters(params, defaults or params)
    scale = resolve_scale(params.get("scale"))
    set_data_options(params.get("data_root"), params.get("image_size"), params.get("verify_checksums", True))
    if "dataset" in params:
        check_dataset(params["dataset"], params.get("data_root"), image_size=params.get("image_size"))
    params["scale"] = scale.name
    seed = int(params.get("seed", 0))
    device = resolve_device(params.get("device", "auto"))
    seed_everything(seed)
    run = Run(notebook, scale, seed, device, dict(params), figures_dir(scale.folder, notebook),
              results_dir(scale.folder, notebook), provenance(device))
    print(run.header())
    return run
