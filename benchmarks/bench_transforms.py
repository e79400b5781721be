"""Throughput of the fixed input transformations (lib.defenses.transforms), in images per second.

    python benchmarks/bench_transforms.py [--device auto|cpu|cuda] [--only jpeg,tvm] [--budget 2.0] [--threads N]

Each transform runs with its registry defaults at 32×32 (batch 256, embedded shapes10 test images) and at
224×224 (batch 16, scikit-image's photographs astronaut / chelsea / coffee, resized), once to warm up and
then repeatedly until `--budget` seconds have passed (at least once, at most `--max-reps` times). The table
is printed and written to benchmarks/results/transforms_<device>.json with the hardware, versions and the
load average at the start (figures from a busy machine are slower than the transform).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib.core.settings import resolve_device  # noqa: E402
from lib.defenses.transforms import TRANSFORMS, build_transform  # noqa: E402

SETTINGS = [(32, 256), (224, 16)]  # (image size, batch size)


def images_32(batch: int) -> torch.Tensor:
    from lib.core.data import load_dataset

    return load_dataset("shapes10", "test").subset(batch).tensors()[0]


def images_224(batch: int) -> torch.Tensor:
    from skimage import data
    from skimage.transform import resize

    photos = []
    for img in (data.astronaut(), data.chelsea(), data.coffee()):
        h, w = img.shape[:2]
        s = min(h, w)
        crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        photos.append(resize(crop, (224, 224), anti_aliasing=True))
    x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float().clamp(0, 1)
    x = x.repeat((batch + 2) // 3, 1, 1, 1)[:batch]
    return torch.where(torch.arange(batch)[:, None, None, None] % 2 == 1, x.flip(-1), x).contiguous()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, x: torch.Tensor, budget: float, max_reps: int) -> dict:
    t = build_transform(name)
    with torch.no_grad():
        sync(x.device)
        start = time.perf_counter()
        t(x)  # warm-up (also the first timing, so that a slow transform runs once only)
        sync(x.device)
        first = time.perf_counter() - start
        times = []
        if first < budget:
            while len(times) < max_reps and sum(times) + first < budget:
                start = time.perf_counter()
                t(x)
                sync(x.device)
                times.append(time.perf_counter() - start)
    seconds = float(np.median(times)) if times else first
    return {
        "transform": name,
        "params": t.extra_repr(),
        "size": x.shape[-1],
        "batch": x.shape[0],
        "reps": len(times) or 1,
        "seconds_per_batch": round(seconds, 5),
        "images_per_second": round(x.shape[0] / seconds, 2),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--only", default="", help="comma-separated transform names (default: all)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed repetitions per case")
    parser.add_argument("--max-reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/transforms_<device>.json)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in TRANSFORMS if n != "none"]
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(names))
        if unknown:
            parser.error(f"unknown transform(s) {unknown}; choose from {names}")
        names = [n for n in names if n in args.only.split(",")]

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    inputs = {32: images_32(256).to(device), 224: images_224(16).to(device)}
    results = []
    started = time.perf_counter()
    print(f"{'transform':22s} {'size':>5s} {'batch':>5s} {'reps':>4s} {'s/batch':>9s} {'images/s':>10s}")
    for name in names:
        for size, batch in SETTINGS:
            row = bench(name, inputs[size][:batch], args.budget, args.max_reps)
            results.append(row)
            print(f"{name:22s} {size:5d} {batch:5d} {row['reps']:4d} {row['seconds_per_batch']:9.4f} "
                  f"{row['images_per_second']:10.1f}", flush=True)
    total = time.perf_counter() - started
    report = {
        "benchmark": "lib.defenses.transforms throughput (images/second, median over repetitions after a warm-up)",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": round(total, 1),
        "results": results,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"transforms_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {total:.1f} s; written to {out}")
    return report


if __name__ == "__main__":
    main()
