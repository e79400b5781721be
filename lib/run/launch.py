"""Several notebooks at once, for lib.run.reproduce: `--jobs N` and `--launcher slurm|local`.

- `--jobs N` (`run_parallel`): N notebooks at a time on this machine, each in its own process (papermill's
  kernels and the driver's environment variables stay apart). When GPUs are visible (CUDA_VISIBLE_DEVICES,
  else torch's device count) each job gets one of them as its only visible device, so N may not exceed
  their number; without GPUs the jobs share the CPU.
- `--launcher slurm` (`run_submitit`): one submitit job per notebook (the launcher MAE and DINO use), with
  the partition, time limit and GPUs per job as options; `--launcher local` is submitit's local executor
  (the same code path on one machine, which is how the tests exercise it).

Every job runs `reproduce.run_notebook`, so executed notebooks, CSVs and figures land in the same layout as a
sequential run, and the model cache's lock (lib.core.cache) makes two jobs that need one uncached model train
it once. A job's "models trained" counts the checkpoints that appeared while it ran, so with concurrent jobs
a model trained by one may also be counted by another that ran at the same time.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from lib.run import reproduce


class JobResult(NamedTuple):
    name: str
    ok: bool
    seconds: float
    trained: int
    message: str
    notebook: str | None  # the executed notebook kept (None unless ok)
    failed_notebook: str | None


def notebook_job(name: str, scale: str, parameters: dict, kernel: str | None, root: str, notebooks: str
                 ) -> JobResult:
    """One notebook through `reproduce.run_notebook`, in whatever process runs this (a local subprocess or a
    submitit job); `root` and `notebooks` are the repository and notebook folders the driver was using."""
    reproduce.REPO, reproduce.NOTEBOOKS = Path(root), Path(notebooks)
    before = reproduce.cached_models()
    result = reproduce.run_notebook(name, scale, parameters, kernel)
    trained = len(reproduce.cached_models() - before)
    return JobResult(name, result.ok, result.seconds, trained, result.message,
                     str(result.notebook) if result.notebook else None,
                     str(result.failed_notebook) if result.failed_notebook else None)


def visible_gpus() -> list[str]:
    """The GPU ids a job may be given: CUDA_VISIBLE_DEVICES when set, else 0 … torch.cuda.device_count() − 1."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_parallel(names: list[str], scale: str, parameters: dict, kernel: str | None, jobs: int) -> list[JobResult]:
    """`names` with at most `jobs` at a time, each in a fresh `python -m lib.run.launch` process (one GPU each
    when there are GPUs). Results in the order of `names`."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: run at least one notebook at a time.")
    gpus = visible_gpus()
    if gpus and jobs > len(gpus):
        raise ValueError(f"--jobs {jobs} asks for more concurrent notebooks than the {len(gpus)} visible GPU(s) "
                         f"{gpus}: each job gets one GPU. Use --jobs {len(gpus)} or fewer.")
    free: queue.Queue = queue.Queue()
    for gpu in gpus[:jobs]:
        free.put(gpu)

    def one(name: str) -> JobResult:
        gpu = free.get() if gpus else None
        try:
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder) / "result.json"
                job = {"name": name, "scale": scale, "parameters": parameters, "kernel": kernel,
                       "root": str(reproduce.REPO), "notebooks": str(reproduce.NOTEBOOKS)}
                done = subprocess.run([sys.executable, "-m", "lib.run.launch", json.dumps(job), str(out)], env=env,
                                      capture_output=True, text=True)
                if done.returncode != 0 or not out.exists():
                    return JobResult(name, False, 0.0, 0, f"job process failed (exit {done.returncode}): "
                                                        f"{done.stderr[-800:]}", None, None)
                return JobResult(*json.loads(out.read_text()))
        finally:
            if gpu is not None:
                free.put(gpu)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, names))


def run_submitit(names: list[str], scale: str, parameters: dict, kernel: str | None, *, cluster: str,
                 folder: str | os.PathLike, partition: str | None = None, timeout_min: int = 240,
                 gpus_per_job: int = 0, cpus_per_job: int | None = None) -> list[JobResult]:
    """One submitit job per notebook on `cluster` ("slurm", or "local" for submitit's local executor);
    waits for all and returns their results in the order of `names` (a job that crashed is a failed result)."""
    import submitit

    if cluster not in ("slurm", "local"):
        raise ValueError(f"--launcher {cluster!r}: use 'slurm' or 'local'.")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    options: dict = {"timeout_min": timeout_min, "name": f"purify-{scale}"}
    if gpus_per_job:
        options["gpus_per_node"] = gpus_per_job
    if cpus_per_job:
        options["cpus_per_task"] = cpus_per_job
    if cluster == "slurm" and partition:
        options["slurm_partition"] = partition
    executor.update_parameters(**options)
    jobs = [executor.submit(notebook_job, name, scale, parameters, kernel, str(reproduce.REPO),
                            str(reproduce.NOTEBOOKS)) for name in names]
    results = []
    for name, job in zip(names, jobs):
        try:
            results.append(JobResult(*job.result()))
        except Exception as err:  # the job itself died (killed, out of time): its log is in `folder`
            results.append(JobResult(name, False, 0.0, 0, f"{type(err).__name__}: {str(err)[-800:]} (logs: {folder})",
                                     None, None))
    return results


if __name__ == "__main__":  # a run_parallel job: python -m lib.run.launch '<job json>' <result path>
    spec = json.loads(sys.argv[1])
    Path(sys.argv[2]).write_text(json.dumps(notebook_job(**spec)))
