"""Speed of IMPure's RIAE at the quick shape, the cost of every attack through it, written as JSON.

    python -m benchmarks.bench_riae [--device auto] [--n 500]

Measures images/second of one forward and one forward + backward (the gradient an adaptive attack takes) for
- `purify`: the last decoder block on each pass's masked patches alone (what `RIAE.forward` runs);
- the full decoder: `RIAE.purify_full_decoder` (every position of every pass decoded, then each patch from its
  own subset's pass), the computation `purify` replaces; both give the same image up to float rounding
  (tests/test_impure.py).
Random weights: speed does not depend on them. Results go to benchmarks/results/riae_<device>.json.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.bench_harness import _timed, save_results
from lib.core.provenance import provenance
from lib.core.settings import resolve_device, seed_everything
from lib.defenses import impure


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=500, help="images per batch")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    seed_everything(0)
    settings = impure.SETTINGS["quick"]
    riae = impure.build(settings, 3, 32).to(device).eval()
    x = torch.rand(args.n, 3, 32, 32, device=device)

    def full_decoder(images):
        return riae.purify_full_decoder(images, riae.division(images)).clamp(0, 1)

    out = {"provenance": provenance(device), "device": str(device), "n": args.n,
           "riae": {k: getattr(settings, k) for k in ("patch_size", "dim", "depth", "heads", "decoder_dim",
                                                       "decoder_depth", "decoder_heads", "masking")}}
    for name, fn in (("purify", riae), ("full_decoder", full_decoder)):
        def forward():
            with torch.no_grad():
                fn(x)

        def backward():
            fn(x.clone().requires_grad_(True)).sum().backward()

        out[f"{name}_forward_images_per_second"] = args.n / _timed(forward, repeats=2)
        out[f"{name}_gradient_images_per_second"] = args.n / _timed(backward, repeats=2)
    out["gradient_speedup"] = out["purify_gradient_images_per_second"] / out["full_decoder_gradient_images_per_second"]

    return save_results(out, "riae", device)


if __name__ == "__main__":
    main()
