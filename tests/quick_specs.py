"""The spec of every cached model the kept quick runs use, computed without training anything.

`quick_run_specs()` calls the getters the way the notebooks do, with `ModelCache.load_or_train` replaced by a
dry version that records each spec and hands back the freshly built, untrained model. The hashes it yields
are compared with `tests/data/quick_spec_hashes.json`: a change that alters any of them invalidates every user's
cache and retrains the model, so it must be deliberate. The file was written before lib was reorganised into
packages (which changed none), and rewritten when quick moved to a width-8 target and ε warm-up for PGD-AT
(`python tests/quick_specs.py > tests/data/quick_spec_hashes.json`; say why in the commit), and extended
(entries added, none changed) when the idfr and the impure notebooks' quick runs were first kept, and for the rdp
notebook's models before its first kept run, and for the leaderboard's (every registered defense against the
natural and the PGD-AT target) before its first.
`quick_run_specs(dry=False)` trains them for real (into $PURIFY_CACHE), in the order the notebooks need them.
"""
from __future__ import annotations

from unittest import mock

from lib.core.cache import ModelCache, spec_hash

SCALE, DATASET, SEED = "quick", "shapes10", 0
IDFR_ONLY = ("adp", "soap")  # baselines only the idfr notebook uses, against the natural target
# impure_ablations' variants of get_impure's defaults (Fig. 7 maskings, Fig. 8 loss layers, Table 3's nine attacks)
IMPURE_VARIANTS = (dict(masking="occlusion"), dict(masking="image_noise"), dict(masking="feature_noise"),
                   dict(weights=(0.0, 0.0, 0.0)), dict(weights=(0.0, 0.0, 5.0)), dict(weights=(0.0, 10.0, 5.0)),
                   dict(train_attacks=("fgsm", "cw", "deepfool", "pgd", "mifgsm", "difgsm", "mdfgsm", "apgd_ce",
                                       "apgd_dlr")))
# dir_ablations' variants of get_dir's defaults
DIR_VARIANTS = (dict(mask_ratio=0.3), dict(mask_ratio=0.7), dict(alpha=0.0), dict(alpha=1.0), dict(alpha=5.0),
                dict(pretrain=False), dict(depth=2, decoder_depth=1), dict(depth=4, decoder_depth=1),
                dict(depth=4, decoder_depth=2), dict(depth=6, decoder_depth=2))


def quick_run_specs(dry: bool = True, log=None, scale: str = SCALE) -> dict[str, dict]:
    """'<kind>-<hash>' -> spec for every model the quick notebooks load (nothing is trained when `dry`)."""
    from lib.defenses.baselines import BASELINES, get_baseline
    from lib.defenses.dir_setup import get_adversarially_trained, get_dir
    from lib.defenses.hgd_setup import ROLES, get_hgd, hgd_classifiers
    from lib.defenses.idfr_setup import get_idfr
    from lib.defenses.impure_setup import get_impure
    from lib.defenses.rdp import DROPPABLE
    from lib.defenses.rdp_setup import get_rdp
    from lib.defenses.registry import DEFENSES, get_defense
    from lib.defenses.superres_setup import get_superres
    from lib.models.zoo import get_classifier

    found: dict[str, dict] = {}
    real = ModelCache.load_or_train

    def record(self, spec, build, train, device="cpu"):
        found[f"{spec['kind']}-{spec_hash(spec)}"] = spec
        if not dry:
            out = real(self, spec, build, train, device)
            if log:
                log(spec, out[1])
            return out
        return build().to(device).eval(), {"cached": True, "metrics": {}, "hash": spec_hash(spec)}

    args = dict(device="cpu", progress=False)
    with mock.patch.object(ModelCache, "load_or_train", record):
        clf = {r: get_classifier(DATASET, r, scale, SEED, **args) for r in ("natural", "pgd_at", "trades", "mart")}
        # hgd: every role's classifier, Tables 2-5's denoisers
        models = hgd_classifiers(DATASET, scale, SEED, roles=ROLES, **args)
        guided = dict(target=models["target"][0], target_record=models["target"][1], sources=models, **args)
        for objective, arch in (("lgd", "dunet"), ("pixel", "dae"), ("pixel", "dunet"), ("fgd", "dunet"),
                                ("cgd", "dunet")):
            get_hgd(objective, DATASET, scale, SEED, arch=arch, **guided)
        get_hgd("lgd", DATASET, scale, SEED, classes=list(range(5)), **guided)
        get_hgd("lgd", DATASET, scale, SEED, target=models["source_b"][0], target_record=models["source_b"][1],
                sources=models, **args)
        for r in ("natural", "pgd_at"):  # baselines (natural); dir, dir_ablations, dir_adaptive (both)
            against = dict(target=clf[r][0], target_record=clf[r][1], **args)
            for name in (b for b in BASELINES if b not in IDFR_ONLY):
                base = get_baseline(name, DATASET, scale, SEED, **against)
                if r == "pgd_at" and name in ("ape_gan", "nrp"):
                    get_adversarially_trained(name, *base, DATASET, scale, SEED, **against)
            lgd = get_hgd("lgd", DATASET, scale, SEED, **against)
            if r == "pgd_at":
                get_adversarially_trained("hgd_lgd", *lgd, DATASET, scale, SEED, **against)
            get_dir(DATASET, scale, SEED, **against)
        for overrides in DIR_VARIANTS:
            get_dir(DATASET, scale, SEED, target=clf["pgd_at"][0], target_record=clf["pgd_at"][1], **args,
                    **overrides)
        # idfr: its surrogate (another seed), the fast-AT target, ID and FR, ADP and SOAP (NRP, ComDefend above)
        get_classifier(DATASET, "natural", scale, SEED + 1, **args)
        get_classifier(DATASET, "fast_at", scale, SEED, **args)
        natural = dict(target=clf["natural"][0], target_record=clf["natural"][1], **args)
        get_idfr(DATASET, scale, SEED, **natural)
        for name in IDFR_ONLY:
            get_baseline(name, DATASET, scale, SEED, **natural)
        # impure: two more target architectures, F (vgg_small from SEED + 1, inside get_impure), RIAE, SR
        get_classifier(DATASET, "natural", scale, SEED, arch="resnet18_small", **args)
        get_classifier(DATASET, "natural", scale, SEED, arch="vgg_small", **args)
        get_impure(DATASET, scale, SEED, **natural)
        for overrides in IMPURE_VARIANTS:  # impure_ablations
            get_impure(DATASET, scale, SEED, **natural, **overrides)
        get_superres(DATASET, scale, SEED, **args)
        # rdp: a second attack source (ResNet-18's layout from SEED + 1), RDP and its Fig. 8 ablations (F, the targets,
        # the other source and the baselines above; Table 4's noise layer is the same model)
        get_classifier(DATASET, "natural", scale, SEED + 1, arch="resnet18_small", **args)
        get_rdp(DATASET, scale, SEED, **args)
        for dropped in DROPPABLE:
            get_rdp(DATASET, scale, SEED, drop=(dropped,), **args)
        # leaderboard: every registered defense in front of its two default targets (most are the specs above)
        for r in ("natural", "pgd_at"):
            for name in DEFENSES:
                get_defense(name, DATASET, scale, SEED, target=clf[r][0], target_record=clf[r][1], **args)
    return found


if __name__ == "__main__":
    import json
    import sys
    import time

    start = time.time()
    train = "--train" in sys.argv
    scale = "smoke" if "--smoke" in sys.argv else SCALE
    log = (lambda spec, rec: print(f"{time.time() - start:6.0f} s  {spec['kind']}-{rec['hash']} "
                                   f"{'cached' if rec['cached'] else 'trained'}", file=sys.stderr, flush=True))
    specs = quick_run_specs(dry=not train, log=log, scale=scale)
    if not train:
        json.dump(dict(sorted(specs.items())), sys.stdout, indent=1, sort_keys=True, default=str)
    print(f"{len(specs)} models", file=sys.stderr)
