"""Speed of the evaluation harness and of classifier training, written as JSON.

    python -m benchmarks.bench_harness [--device auto] [--n 256]

Measures, on the quick-scale classifier architecture (random weights: speed does not depend on them):
- PGD-20 images/second called directly through torchattacks-style `run_attack`, and through
  `lib.eval.evaluation.evaluate` (the harness: threat model, scoring, result row); the overhead must stay < 10%;
- training images/second for the natural and the PGD-AT recipes (one short epoch each);
- with CUDA: the same in bf16 autocast and channels-last.
Results go to benchmarks/results/harness_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lib.attacks.registry import build_attack, run_attack
from lib.models.classifiers import build_classifier
from lib.core.data import load_dataset
from lib.eval.evaluation import evaluate
from lib.core.provenance import provenance
from lib.core.settings import get_scale, resolve_device, seed_everything
from lib.models.recipes import recipe_for, train_classifier


def _timed(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` calls (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def save_results(out: dict, name: str, device: torch.device) -> dict:
    """Write `out` to benchmarks/results/<name>_<device type>.json and print it without its provenance."""
    path = Path(__file__).parent / "results" / f"{name}_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "provenance"}, indent=2))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=256, help="images attacked")
    parser.add_argument("--train-images", type=int, default=2048)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    seed_everything(0)
    scale = get_scale("quick")
    model = build_classifier(scale.classifier, "shapes10", scale.width).to(device).eval()
    test = load_dataset("shapes10", "test").subset(args.n)
    x, y = test.tensors(device)
    out = {"provenance": provenance(device), "device": str(device), "n": args.n,
           "model": f"{scale.classifier} width {scale.width}"}

    attack = build_attack("pgd", model, eps=8 / 255, steps=20)
    direct = _timed(lambda: run_attack(attack, x, y, seed=0))
    harness = _timed(lambda: evaluate(None, model, x, y, attack="pgd", threat_model="white-box", steps=20,
                                      batch_size=args.n))
    out["pgd20_images_per_second_direct"] = args.n / direct
    out["pgd20_images_per_second_harness"] = args.n / harness
    out["harness_overhead"] = harness / direct - 1

    if device.type == "cuda":
        cl = model.to(memory_format=torch.channels_last)
        def amp():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                run_attack(build_attack("pgd", cl, eps=8 / 255, steps=20), x.contiguous(memory_format=torch.channels_last), y)
        out["pgd20_images_per_second_bf16_channels_last"] = args.n / _timed(amp)

    train = load_dataset("shapes10", "train").subset(args.train_images)
    for name in ("natural", "pgd_at"):
        seed_everything(0)
        net = build_classifier(scale.classifier, "shapes10", scale.width)
        metrics = train_classifier(net, train, test, recipe_for(name, scale, epochs=1), device=device, progress=False)
        out[f"train_images_per_second_{name}"] = metrics["train_images_per_second"]

    return save_results(out, "harness", device)


if __name__ == "__main__":
    main()
