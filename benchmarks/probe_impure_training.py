"""Probe: does quick RIAE learn, and what does Eq. 15's perceptual loss do to it? (docs/notes/impure_quick_scale.md)

Trains one RIAE variant on IMPure's quick training pairs for a fixed number of steps, printing the loss terms
every 25 steps, then scores it on 200 test images: pixel L1 to the clean image of the purified clean and PGD
(16/255, 10 steps) images, and the quick target's accuracy on both. The target and F come from the model cache
(trained on first use); the pairs are made once and kept in --pairs.

    OMP_NUM_THREADS=1 python -m benchmarks.probe_impure_training --steps 400 --pixel-only
    OMP_NUM_THREADS=1 python -m benchmarks.probe_impure_training --steps 1500 --pixel-warmup 1000
    OMP_NUM_THREADS=1 python -m benchmarks.probe_impure_training --steps 400 --robust-feature-network
    OMP_NUM_THREADS=1 python -m benchmarks.probe_impure_training --steps 400 --weight-scale 0.03

Not a test and not a benchmark of speed: a record of how the measurements in the note were made.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch

from lib.attacks.attack_sets import AdversarialSet, pair_batches
from lib.attacks.registry import build_attack, run_attack
from lib.core.data import load_dataset
from lib.core.settings import get_scale
from lib.defenses.impure import IMPureTrainer, build, combine, impure_loss, rcm_mask
from lib.defenses.impure_setup import feature_network, impure_settings, training_pairs
from lib.models.zoo import get_classifier


class WarmupTrainer(IMPureTrainer):
    """IMPure's trainer with a linear learning-rate warm-up over the first `lr_warmup` steps, and Eq. 15's
    perceptual weights set to zero for the first `pixel_warmup` steps (the pixel loss alone)."""

    def __init__(self, *args, lr_warmup: int = 0, pixel_warmup: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_warmup, self.pixel_warmup, self.steps_done = lr_warmup, pixel_warmup, 0
        self.full_settings = self.settings

    def schedule(self, step: int, total: int) -> None:
        factor = 0.5 * (1 + math.cos(math.pi * step / self.total_steps))
        if self.lr_warmup:
            factor *= min(1.0, (step + 1) / self.lr_warmup)
        for group in self.opt.param_groups:
            group["lr"] = self.settings.lr * factor
        pixel_only = step < self.pixel_warmup
        self.settings = (dataclasses.replace(self.full_settings, weights=(0.0,) * len(self.full_settings.weights))
                         if pixel_only else self.full_settings)


def gradient_norms(riae, network, s, x, x_adv) -> dict:
    """Each Eq. 15 term's value and the norm of its λ-weighted gradient with respect to RIAE's parameters, on one
    batch in training mode (the scale of what AdamW's step direction is made of)."""
    riae.train()
    raw = riae.purify(x_adv, riae.division(x_adv))
    purified = raw + (raw.clamp(0, 1) - raw).detach()
    u = rcm_mask(len(x), riae, torch.Generator().manual_seed(0))
    terms = impure_loss(purified, combine(purified, x_adv, u), x, network, impure_settings("quick").weights)
    params = [p for p in riae.parameters() if p.requires_grad]
    out = {}
    for name, weight in zip(("pixel", "perceptual_0", "perceptual_1", "perceptual_2"),
                            (1.0, *impure_settings("quick").weights)):
        grads = torch.autograd.grad(weight * terms[name], params, retain_graph=True, allow_unused=True)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)).item()
        out[name] = (round(terms[name].item(), 4), round(norm, 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=None, help="default: the quick setting (1e-3)")
    parser.add_argument("--lr-warmup", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--noise-max", type=float, default=None)
    parser.add_argument("--masking", default=None)
    parser.add_argument("--pixel-only", action="store_true", help="λ = 0: the pixel loss alone")
    parser.add_argument("--pixel-warmup", type=int, default=0, help="steps of the pixel loss alone first")
    parser.add_argument("--weight-scale", type=float, default=1.0, help="a common factor on Eq. 15's λ")
    parser.add_argument("--robust-feature-network", action="store_true", help="F = a PGD-AT vgg_small (seed 1)")
    parser.add_argument("--gradient-norms", action="store_true",
                        help="print each term's gradient norm (Eq. 15's λ) on the first batch, before and after")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an IMPureSettings size field, e.g. --set patch_size=2 --set dim=64")
    parser.add_argument("--pairs", type=Path, default=Path("/tmp/impure_quick_pairs.pt"))
    args = parser.parse_args()

    scale = get_scale("quick")
    changes = {k: v for k, v in dict(lr=args.lr, batch_size=args.batch_size, noise_max=args.noise_max,
                                     masking=args.masking).items() if v is not None}
    for item in args.set:
        field, _, value = item.partition("=")
        changes[field] = int(value)
    changes["weights"] = tuple(0.0 if args.pixel_only else args.weight_scale * w for w in impure_settings(scale).weights)
    s = dataclasses.replace(impure_settings(scale), **changes)
    target, _ = get_classifier("shapes10", "natural", scale, 0, device="cpu", progress=False)
    if args.robust_feature_network:
        network, _ = get_classifier("shapes10", "pgd_at", scale, 1, arch="vgg_small", device="cpu", progress=False)
    else:
        network, _ = feature_network("shapes10", scale, 0, device="cpu", progress=False)
    network.eval().requires_grad_(False)
    if args.pairs.exists():  # plain tensors, so that loading runs no pickled code
        pairs = AdversarialSet(**torch.load(args.pairs, weights_only=True))
    else:
        data = load_dataset("shapes10", "train").subset(s.n_train, 0)
        pairs = training_pairs(target, data, s, device="cpu", seed=0, progress=False)
        torch.save(dataclasses.asdict(pairs), args.pairs)

    x, y = load_dataset("shapes10", "test").subset(200, 1).tensors("cpu")
    pgd = build_attack("pgd", target, eps=16 / 255, steps=10, step_size=4 / 255, n_classes=10, seed=0)
    x_adv = run_attack(pgd, x, y, seed=0)

    riae = build(s, 3, 32, seed=0)
    trainer = WarmupTrainer(riae, network, s, total_steps=args.steps, seed=0, lr_warmup=args.lr_warmup,
                            pixel_warmup=args.pixel_warmup)
    batches = pair_batches(pairs, s.batch_size, 0, "cpu")
    first = next(batches(0))
    if args.gradient_norms:
        print("gradient norms at init (value, norm):", gradient_norms(riae, network, s, first[0], first[1]))
    start, step, epoch = time.perf_counter(), 0, 0
    while step < args.steps:
        epoch += 1
        for xb, xb_adv, yb in batches(epoch):
            if step == args.steps:
                break
            trainer.schedule(step, args.steps)
            terms = trainer.step(xb, xb_adv, yb)
            if step % 25 == 0:
                print(step, {k: round(v, 4) for k, v in terms.items()}, f"{time.perf_counter() - start:.0f} s", flush=True)
            step += 1
    if args.gradient_norms:
        print("gradient norms after training (value, norm):", gradient_norms(riae, network, s, first[0], first[1]))
    riae.eval()
    with torch.no_grad():
        clean, adversarial = riae(x), riae(x_adv)
        accuracy = {k: (target(v).argmax(1) == y).float().mean().item()
                    for k, v in {"clean": clean, "pgd": adversarial, "pgd, no defense": x_adv}.items()}
    print({"l1_clean": (clean - x).abs().mean().item(), "l1_pgd": (adversarial - x).abs().mean().item(),
           **{f"accuracy ({k})": v for k, v in accuracy.items()}, "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    main()
