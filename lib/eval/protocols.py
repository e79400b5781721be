"""Evaluation protocols shared by the notebooks: defenses × attacks → rows, and the tables built from rows.

    rows = defense_rows({"None": None, "DIR": dir_denoiser}, target, x, y, ["pgd", "mifgsm"], eps=8/255,
                        steps=20, step_size=2/255, threat_models=white_box_and_eot, eot_samples=4,
                        classifier="pgd_at", dataset="shapes10")
    attack_table(rows_frame(rows))          # one line per (defense, threat model), accuracy % per attack
    pick(frame, defense="DIR", attack="pgd", threat_model="white-box+eot").accuracy

| function | what |
|---|---|
| `check_n_eval` | a notebook's `n_eval` parameter: None → the scale's default, else an int in [1, scale.n_eval] |
| `purify_batched` | purifier(x) in batches, without gradients, optionally reseeded first |
| `defense_rows` | the Table-1 protocol: per defense the clean row, then every attack under every threat model |
| `transfer_rows` | black-box tables (RDP's Table 1): crafted once per source and attack, purified once per defense, scored on every target |
| `targeted_rows` | a targeted attack (random target class ≠ label) through each defense (RDP's Table 4: targeted PGD-10) |
| `white_box_and_eot` | `white-box`, plus `white-box+eot` for a random defense (DIR's Table 1 protocol) |
| `mask_aware_rows` | DIR's Eq. 8 attack, scored with the attacker's masks and with fresh ones |
| `stored_set_rows` | each defense on stored adversarial test sets (HGD's Tables 2-5) |
| `pick` | the one row of a frame matching column values (an error on none or several) |
| `percent_table`, `attack_table`, `accuracy_columns` | pivots of result rows (% with intervals; DIR's Table 1 layout) |
| `threat_setting`, `setting_table` | clean / oblivious / transfer / adaptive, and accuracy per defense and setting |
| `side_by_side` | our table above the paper's (lib.core.reference) with the same columns |
| `collapsed_models`, `claim_between`, `verdict` | the claims tables: does row a beat row b, no verdict on a collapsed model |
| `training_summary` | one line per trained model record (from cache, seconds, loss by epoch) |

Accuracies in rows are fractions; every table that says `%` multiplies by 100. ε is in pixel units (8/255).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.attacks.adaptive import mask_aware_attack
from lib.attacks.attack_sets import AdversarialSet
from lib.attacks.registry import FIXED_STEPS, build_attack, run_attack
from lib.attacks.threat_models import attacked_model, parse_threat_model
from lib.core.estimate import note_images, subset
from lib.core.purifiers import Identity, is_randomized, purify_batched, reseed  # noqa: F401 (purify_batched: re-exported for the notebooks)
from lib.core.results import claim_line, is_collapsed, result_row
from lib.core.settings import SCALES, Scale
from lib.eval.evaluation import check_inputs, clean_row, evaluate, predictions, score
from lib.eval.sanity import default_threat_model
from lib.eval.stored_sets import evaluate_test_sets

# Column labels of the papers' tables for our attack names (DIR Tables 1-2: Natural, PGD, AA, MI, VNI).
ATTACK_LABELS = {"none": "Natural", "fgsm": "FGSM", "pgd": "PGD", "autoattack": "AA", "autoattack_rand": "AA",
                 "mifgsm": "MI-FGSM", "vnifgsm": "VNI-FGSM", "apgd_ce": "APGD-CE", "apgd_dlr": "APGD-DLR", "cw": "CW"}
# What a threat model is called in the clean / oblivious / adaptive tables of the baselines notebooks.
SETTINGS = ("clean", "oblivious", "transfer", "adaptive")


# ---------------------------------------------------------------------------------------------- sizes, purifying
def check_n_eval(n_eval: int | None, scale: Scale, default: int | None = None) -> int:
    """A notebook's `n_eval` parameter (test images attacked per defense), checked against the scale.

    None → `default` (a notebook's own size for this scale), or the scale's n_eval when that is None too (under a
    dry-run limit, at most the capped scale's n_eval).
    The images are the first n_eval of the scale's evaluation subset, so n_eval must be an int in
    [1, scale.n_eval]; anything else is a ValueError that says so.
    """
    if n_eval is None:
        n_eval = default or scale.n_eval
        if scale.limit:  # a dry run (lib.core.dry_run): the notebook's own size is capped like the scale's
            full = n_eval if default else SCALES[scale.name].n_eval
            n_eval = min(n_eval, scale.n_eval)
            note_images(full, n_eval)  # what a cost estimate scales the evaluations by (lib.core.estimate)
    if isinstance(n_eval, bool) or not isinstance(n_eval, (int, np.integer)) or not 1 <= n_eval <= scale.n_eval:
        raise ValueError(f"n_eval={n_eval!r} must be an integer from 1 to the scale's n_eval ({scale.n_eval}): the "
                         "images are the first n_eval of the scale's evaluation subset.")
    return int(n_eval)




# --------------------------------------------------------------------------------------------- rows from attacks
def white_box_and_eot(purifier: nn.Module | None) -> tuple[str, ...]:
    """`white-box` (the papers' protocol), plus `white-box+eot` for a random purifier (Athalye et al. 2018)."""
    return ("white-box", "white-box+eot") if is_randomized(purifier) else ("white-box",)


def _threat_models(spec, purifier: nn.Module | None) -> tuple[str, ...]:
    if spec is None:
        return (default_threat_model(purifier or Identity()),)
    if callable(spec):
        return tuple(spec(purifier))
    return (spec,) if isinstance(spec, str) else tuple(spec)


def defense_rows(defenses: Mapping[str, nn.Module | None], target: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 attacks: Sequence[str] = ("pgd",), *, eps: float, steps: int, step_size: float | None = None,
                 threat_models: str | Sequence[str] | Callable | None = None, eot_samples: int = 1,
                 eot_attacks: Sequence[str] | None = None, defense_runs: int = 1, clean: bool = True,
                 autoattack: int = 0, autoattack_rand: int | None = None, keep: dict | None = None,
                 keep_attacks: Sequence[str] = ("pgd",), classifier: str = "classifier", dataset: str = "unknown",
                 seed: int = 0, **extra) -> list[dict]:
    """The Table-1 protocol: for each named defense in order, target ∘ purifier under every attack.

    Per defense: the clean row (`clean_row`, unless clean=False), then for each threat model (in order) each
    attack (`evaluate`), then AutoAttack on the first `autoattack` images. A defense's threat models are
    `threat_models(purifier)` when callable (e.g. `white_box_and_eot`), the given name(s), or
    `lib.eval.sanity.default_threat_model` when None (white-box, BPDA for a non-differentiable purifier,
    +EOT for a random one). EOT threat models average `eot_samples` gradients per step and run only the
    attacks in `eot_attacks` (None: all). AutoAttack attacks through the purifier (`white-box`, or `bpda`
    for a non-differentiable one): the standard version for a deterministic purifier, the `rand` version
    (EOT over 20 draws inside APGD) on the first `autoattack_rand` images (None: `autoattack`) for a random one. x: (N, C, H, W) in [0, 1], y: (N,).

    keep: a dict that receives the adversarial images of the attacks in `keep_attacks`, keyed
    (defense, threat_model, attack). Rows are lib.core.results rows (accuracy a fraction) with `extra` columns.
    """
    tag = dict(classifier=classifier, dataset=dataset, seed=seed, **extra)
    rows = []
    for name, purifier in defenses.items():
        if clean:
            rows.append(clean_row(purifier, target, x, y, defense=name, defense_runs=defense_runs, **tag))
        for threat_model in _threat_models(threat_models, purifier):
            eot = eot_samples if "eot" in threat_model else 1
            for attack in attacks:
                if "eot" in threat_model and eot_attacks is not None and attack not in eot_attacks:
                    continue
                row, x_adv = evaluate(purifier, target, x, y, attack=attack, threat_model=threat_model, eps=eps,
                                      steps=steps, step_size=step_size, eot_samples=eot, defense_runs=defense_runs,
                                      return_adversarial=True, defense=name, **tag)
                rows.append(row)
                if keep is not None and attack in keep_attacks:
                    keep[(name, threat_model, attack)] = x_adv
        random = is_randomized(purifier)
        requested = autoattack if not random or autoattack_rand is None else autoattack_rand
        n_aa = min(requested, len(y))
        if n_aa:  # through the purifier (BPDA when it is not differentiable); the rand version does its own EOT
            with subset(requested, n_aa):  # a cost estimate scales it by its own image count (lib.core.estimate)
                    rows.append(evaluate(purifier, target, x[:n_aa], y[:n_aa], attack="autoattack_rand" if random
                                     else "autoattack", threat_model=default_threat_model(purifier or Identity()
                                                                                           ).replace("+eot", ""),
                                     eps=eps, defense_runs=defense_runs, defense=name, **tag))
    return rows


def transfer_rows(defenses: Mapping[str, nn.Module | None], targets: Mapping[str, nn.Module],
                  sources: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str], *,
                  eps: float, steps: int, step_size: float | None = None, defense_runs: int = 1, clean: bool = True,
                  keep: dict | None = None, dataset: str = "unknown", seed: int = 0, **extra) -> list[dict]:
    """Black-box rows (`transfer`, RDP's Table 1): every defense in front of every target, against attacks crafted
    on surrogate `sources` that see neither.

    The adversarial images depend only on (source, attack): each is crafted once (`evaluate` on the source alone,
    the row's seed), and each defense purifies them once per run (reseeded as `score` does: seed·1000 + r) for all
    the targets, which is what `evaluate_oblivious(..., threat_model="transfer")` per target gives, at a fraction
    of the cost when the targets are many and the transforms slow. An image counts as correct only if it is right
    in every one of a random defense's `defense_runs` runs. clean: first the clean rows of every defense × target
    (attack 'none', source ''). keep: a dict of adversarial images keyed (source, attack, eps): filled with those
    crafted here, and those already in it are scored instead of crafted again (another call on the same images, e.g.
    more defenses against the same attacks; their rows' `seconds` then count the scoring only). Rows:
    lib.core.results rows with `classifier` the target's name, `source`, and the `extra` columns; in the order
    source, attack, defense, target. x: (N, C, H, W) in [0, 1], y: (N,).
    """
    for model in targets.values():
        check_inputs(model.eval(), x, y)

    def scored(images, attack, source, threat_model, steps_used, step, attack_seconds):
        out = []
        for name, purifier in defenses.items():
            begin = time.perf_counter()
            purifier = (purifier or Identity()).eval()
            runs = defense_runs if is_randomized(purifier) else 1
            correct = {t: [] for t in targets}
            for r in range(runs):
                reseed(purifier, seed * 1000 + r)
                purified = purify_batched(purifier, images, batch_size=512)
                for t, model in targets.items():
                    correct[t].append(predictions(model, purified) == y)
            for t in targets:
                c = torch.stack(correct[t])  # (runs, N)
                out.append(result_row(
                    defense=name, classifier=t, dataset=dataset, threat_model=threat_model, attack=attack,
                    eps=0.0 if attack == "none" else eps, steps=steps_used, step_size=step,
                    correct=int(c.all(0).sum()), n=len(y), seed=seed, seconds=attack_seconds + time.perf_counter() - begin,
                    source=source, accuracy_mean_run=float(c.float().mean()),
                    accuracy_majority=float((c.float().mean(0) > 0.5).float().mean()), defense_runs=runs, eot_samples=1,
                    **extra))
        return out

    rows = scored(x, "none", "", "none", 0, 0.0, 0.0) if clean else []
    keep = {} if keep is None else keep
    for source_name, source in sources.items():
        for attack in attacks:
            start = time.perf_counter()
            key = (source_name, attack, eps)
            if key not in keep or len(keep[key][0]) != len(x):
                first, adversarial = evaluate(None, source, x, y, attack=attack, threat_model="oblivious", eps=eps,
                                              steps=steps, step_size=step_size, seed=seed, return_adversarial=True)
                keep[key] = adversarial, first["steps"], first["step_size"]
            adversarial, steps_used, step = keep[key]
            rows += scored(adversarial, attack, source_name, "transfer", steps_used, step, time.perf_counter() - start)
    return rows


def targeted_rows(defenses: Mapping[str, nn.Module | None], target: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  eps: float, steps: int, step_size: float | None = None, attack: str = "pgd",
                  threat_models: str | Sequence[str] | Callable | None = None, eot_samples: int = 1,
                  defense_runs: int = 1, classifier: str = "classifier", dataset: str = "unknown", seed: int = 0,
                  batch_size: int = 256, **extra) -> list[dict]:
    """A targeted attack through each defense (RDP's Table 4: targeted PGD-10 in white-box settings, after Xie et al.
    2019): every image gets a target class drawn uniformly from the classes other than its label (a generator seeded
    by `seed`, the same classes for every defense), the attack descends the loss towards it, and the row's
    `accuracy` is the fraction still classified correctly (worst case over `defense_runs`, as `evaluate` scores),
    `target_hit` the fraction classified as the attacker's class (mean over runs). Threat models as in
    `defense_rows` (None: `lib.eval.sanity.default_threat_model`); EOT threat models average `eot_samples`
    gradients per step. Rows carry `targeted='random'`; x: (N, C, H, W) in [0, 1], y: (N,)."""
    n_classes = check_inputs(target.eval(), x, y)
    generator = torch.Generator().manual_seed(seed)
    goal = ((y.cpu() + torch.randint(1, n_classes, (len(y),), generator=generator)) % n_classes).to(y.device)
    rows = []
    for name, purifier in defenses.items():
        purifier = (purifier or Identity()).eval()
        for threat_model in _threat_models(threat_models, purifier):
            parse_threat_model(threat_model)
            eot = eot_samples if "eot" in threat_model else 1
            start = time.perf_counter()
            atk = build_attack(attack, attacked_model(threat_model, purifier, target, None, eot), eps, steps,
                               step_size, n_classes=n_classes, seed=seed)
            atk.set_mode_targeted_by_label(quiet=True)  # the labels given to the attack are the target classes
            reseed(purifier, seed)
            adversarial = torch.cat([run_attack(atk, xb, gb, seed + i) for i, (xb, gb)
                                     in enumerate(zip(x.split(batch_size), goal.split(batch_size)))])
            right = score(purifier, target, adversarial, y, defense_runs, seed)
            hit = score(purifier, target, adversarial, goal, defense_runs, seed)  # the same draws (reseeded)
            rows.append(result_row(
                defense=name, classifier=classifier, dataset=dataset, threat_model=threat_model, attack=attack,
                eps=eps, steps=FIXED_STEPS.get(attack, steps), step_size=float(getattr(atk, "alpha", float("nan"))),
                correct=int(right["worst"].sum()), n=len(y), seed=seed, seconds=time.perf_counter() - start,
                targeted="random", target_hit=float(hit["mean"].mean()), accuracy_mean_run=float(right["mean"].mean()),
                defense_runs=right["runs"], eot_samples=eot, **extra))
    return rows


def mask_aware_rows(denoiser: nn.Module, target: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                    steps: int, step_size: float, defense_runs: int = 1, seed: int = 0, batch_size: int = 256,
                    defense: str = "DIR", classifier: str = "classifier", dataset: str = "unknown") -> list[dict]:
    """DIR's Eq. 8 (lib.attacks.adaptive.mask_aware_attack) over x in batches: two rows, `scoring` =
    'known masks' (target(denoiser.restore(x_adv, masks)) with the attacker's own masks) and 'fresh masks'
    (the deployed defense, `score` over `defense_runs` new draws, worst case).

    The attacker's masks come from seed 2**31 − 1 − seed, which score()'s runs (seed·1000 + r) never use.
    x: (N, C, H, W) in [0, 1]; `denoiser` needs draw_masks / restore (lib.defenses.dir_denoiser.DIRDenoiser).
    """
    start = time.perf_counter()
    denoiser.reseed(2**31 - 1 - seed)
    generator = torch.Generator(device=x.device).manual_seed(seed)  # PGD's random start
    adversarial, known = [], []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        x_adv, masks = mask_aware_attack(denoiser, target, xb, yb, eps=eps, steps=steps, step_size=step_size,
                                         generator=generator)
        with torch.no_grad():
            known.append(target(denoiser.restore(x_adv, masks)).argmax(1) == yb)
        adversarial.append(x_adv)
    attack_seconds = time.perf_counter() - start
    known = torch.cat(known)
    fresh = score(denoiser, target, torch.cat(adversarial), y, runs=defense_runs, seed=seed)
    common = dict(defense=defense, classifier=classifier, threat_model="mask-aware (Eq. 8)", attack="pgd", eps=eps,
                  steps=steps, step_size=step_size, n=len(y), dataset=dataset, seed=seed)
    return [result_row(**common, correct=int(known.sum()), seconds=attack_seconds, scoring="known masks",
                       defense_runs=1, accuracy_mean_run=float(known.float().mean())),
            result_row(**common, correct=int(fresh["worst"].sum()), seconds=time.perf_counter() - start,
                       scoring=f"fresh masks (worst of {fresh['runs']} runs)", defense_runs=fresh["runs"],
                       accuracy_mean_run=float(fresh["mean"].mean()))]


def stored_set_rows(defenses: Mapping[str, nn.Module | None], target: nn.Module, sets: dict[str, AdversarialSet], *,
                  classifier: str, dataset: str, seed: int = 0, device="cpu", batch_size: int = 250) -> list[dict]:
    """`lib.eval.stored_sets.evaluate_test_sets` for each named defense in order, in front of one target:
    clean, then every stored set and ε (HGD's Tables 2-5; rows with test_set and denoising_loss)."""
    return [row for name, purifier in defenses.items()
            for row in evaluate_test_sets(purifier, target, sets, defense=name, classifier_name=classifier,
                                          dataset=dataset, seed=seed, device=device, batch_size=batch_size)]


# ------------------------------------------------------------------------------------------------ reading rows
def pick(frame: pd.DataFrame, **where) -> pd.Series:
    """The one row of `frame` whose columns equal `where` (floats within 1e-6, so eps=8/255 matches).

    A LookupError names the condition and, when nothing matches, the values each column does hold.
    """
    mask = np.ones(len(frame), dtype=bool)
    for column, value in where.items():
        if column not in frame.columns:
            raise KeyError(f"pick: no column {column!r}; the frame has {list(frame.columns)}")
        values = frame[column]
        if isinstance(value, float) and pd.api.types.is_numeric_dtype(values):
            mask &= np.isclose(values.to_numpy(dtype=float), value, rtol=0, atol=1e-6)
        else:
            mask &= (values == value).to_numpy()
    found = int(mask.sum())
    if found != 1:
        held = "" if found else "; the frame holds " + ", ".join(
            f"{c}: {list(dict.fromkeys(frame[c]))[:12]}" for c in where)
        raise LookupError(f"{found} rows match {where} (expected exactly one){held}")
    return frame[mask].iloc[0]


def percent_table(frame: pd.DataFrame, index: str | list[str], columns: Sequence[str] = (),
                  value: str = "accuracy") -> pd.DataFrame:
    """`columns` of each row by `index`, then `value` in % (2 decimals) and its 95% interval '[lo, hi]' in %."""
    out = frame.set_index(index)[list(columns)].copy()
    out[f"{value} %"] = (100 * frame[value]).round(2).to_numpy()
    out["95% CI"] = [f"[{100 * lo:.1f}, {100 * hi:.1f}]" for lo, hi in zip(frame.ci_low, frame.ci_high)]
    return out


def attack_table(frame: pd.DataFrame, labels: Mapping[str, str] = ATTACK_LABELS,
                 shared: Sequence[str] = ("none", "autoattack")) -> pd.DataFrame:
    """DIR's Table 1 layout: one line per (defense, threat model), accuracy in % (2 decimals) per attack.

    The rows of the `shared` attacks (natural accuracy, standard AutoAttack: one per defense, whatever the
    threat model) appear on every line of their defense; `autoattack_rand` (EOT inside APGD) goes on the
    `white-box+eot` line. Columns are `labels` of the attacks, in the order of `labels`.
    """
    frame = frame.copy()
    frame["threat"] = np.where(frame.attack.isin(list(shared)), "", frame.threat_model)
    frame.loc[frame.attack == "autoattack_rand", "threat"] = "white-box+eot"
    frame["column"] = frame.attack.map(lambda a: labels.get(a, a))
    table = {}
    for defense, part in frame.groupby("defense", sort=False):
        base = part[part.threat == ""].set_index("column").accuracy
        for threat_model in [t for t in dict.fromkeys(part.threat) if t] or ["white-box"]:
            line = dict(base)
            line.update(part[part.threat == threat_model].set_index("column").accuracy)
            table[(defense, threat_model)] = line
    out = pd.DataFrame(table).T * 100
    out.index.names = ["defense", "threat model"]
    order = list(dict.fromkeys(labels.values())) + [c for c in out.columns if c not in labels.values()]
    return out[[c for c in order if c in out]].round(2)


def attack_columns(frame: pd.DataFrame, index: str | list[str], attacks: Sequence[str],
                   value: str = "accuracy") -> pd.DataFrame:
    """`value` in % by `index` × attack: `clean` (attack 'none') first, then `attacks` in their order; rows in the
    frame's order (IMPure's Tables 1-3 layout, the paper's attack names being the registry's)."""
    out = 100 * frame.pivot_table(index=index, columns="attack", values=value, sort=False)
    return out[[a for a in ["none", *attacks] if a in out.columns]].rename(columns={"none": "clean"})


def eps_in_255(table: pd.DataFrame) -> pd.DataFrame:
    """A table with (attack, ε) columns, ε shown in /255 (4, 8, 16) instead of fractions of 1."""
    return table.rename(columns=lambda e: round(e * 255) if isinstance(e, float) else e)


def eps_table(frame: pd.DataFrame, index: str | list[str], value: str = "accuracy") -> pd.DataFrame:
    """`value` in % by `index` × (attack, ε in /255), rows and columns in the frame's order (one row per cell)."""
    return eps_in_255(100 * frame.pivot_table(index=index, columns=["attack", "eps"], values=value, sort=False))


def threat_setting(threat_model: str) -> str:
    """'clean' (no attack), 'oblivious', 'transfer', or 'adaptive' (the attacker sees the purifier)."""
    return {"none": "clean", "oblivious": "oblivious", "transfer": "transfer"}.get(threat_model, "adaptive")


def setting_table(frame: pd.DataFrame, index: str | list[str] = "defense", columns: Sequence[str] = (),
                  value: str = "accuracy", aggfunc="min") -> pd.DataFrame:
    """`value` per `index` and setting (clean / oblivious / transfer / adaptive, see `threat_setting`), under
    the optional outer `columns` (e.g. classifier). Several rows in one cell (two adaptive attacks) give
    `aggfunc` of them: the worst case by default. Index and outer columns keep their order of appearance."""
    f = frame.assign(setting=frame.threat_model.map(threat_setting))
    wide = f.pivot_table(index=index, columns=[*columns, "setting"], values=value, aggfunc=aggfunc, sort=False)
    settings = [s for s in SETTINGS if s in set(f.setting)]
    if not columns:
        return wide[settings]
    outer = [list(dict.fromkeys(f[c])) for c in columns]
    return wide.reindex(columns=pd.MultiIndex.from_product([*outer, settings], names=[*columns, "setting"]))


def accuracy_columns(frame: pd.DataFrame, index: str, attacks: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One line per `index` value: 'ours <label>' (accuracy, 3 decimals) and 'ours <label> CI' per attack
    (attacks: {attack: label}, default natural and PGD)."""
    table = {}
    for attack, label in (attacks or {"none": "natural", "pgd": "PGD"}).items():
        part = frame[frame.attack == attack].set_index(index)
        table[f"ours {label}"] = part.accuracy.round(3)
        table[f"ours {label} CI"] = [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(part.ci_low, part.ci_high)]
    return pd.DataFrame(table)


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, *, percent: bool = True, digits: int | None = None,
                 labels: tuple[str, str] = ("ours", "paper"), paper_names: Mapping[str, str] | None = None
                 ) -> pd.DataFrame:
    """Our table (rows × columns) above the paper's with the same columns, one block each (index level 'source').

    percent: ours holds fractions and the paper percentages (ours ×100, 1 decimal; else 4 decimals unless
    `digits`). paper_names renames the paper's row labels to ours, so that the blocks line up.
    """
    digits = (1 if percent else 4) if digits is None else digits
    ours = (ours * 100 if percent else ours).round(digits)
    paper = paper.rename(index=dict(paper_names or {})).reindex(columns=ours.columns)
    return pd.concat({labels[0]: ours, labels[1]: paper}, names=["source", *ours.index.names])


# ------------------------------------------------------------------------------------------------------- claims
def collapsed_models(frame: pd.DataFrame, n_classes: int) -> dict[tuple[str, str], float]:
    """{(defense, classifier): natural accuracy} of the models whose clean row is below twice chance
    (lib.core.results.is_collapsed): their accuracy under attack is the luck of one answer, not robustness."""
    clean = frame[frame.attack == "none"].groupby(["defense", "classifier"], sort=False).accuracy.first()
    return {key: float(acc) for key, acc in clean.items() if is_collapsed(acc, n_classes)}


def verdict(holds: bool, checked: bool = True) -> str:
    """'yes' / 'no', or 'not checked at smoke' when the numbers mean nothing (checked=False)."""
    return ("yes" if holds else "no") if checked else "not checked at smoke"


def claim_between(claim: str, paper: str, a, b, *, checked: bool = True,
                  collapsed: Iterable[tuple[str, str]] = (), label: str = "defense") -> dict:
    """lib.core.results.claim_line for rows a and b: does a beat b, are their intervals apart? No verdict
    when a or b is a collapsed model ((defense, classifier) in `collapsed`), which is named by its `label`."""
    collapsed = set(collapsed)
    names = [row[label] for row in (a, b) if (row["defense"], row["classifier"]) in collapsed]
    return claim_line(claim, paper, a, b, checked=checked, collapsed=names)


def verdict_counts(first: pd.DataFrame, second: pd.DataFrame, columns: Sequence, *, checked: bool = True) -> dict:
    """Over `columns` (index values of both frames, e.g. attacks): in how many the first row is above the second
    beyond the sampling noise, below it, or not told apart (`claim_line` on each pair of rows). At smoke
    (checked=False) every count is 0: there is no verdict to count."""
    verdicts = [claim_line("", "", first.loc[c], second.loc[c], checked=checked)["holds here"] for c in columns]
    return {"first above": verdicts.count("yes"), "first below": verdicts.count("no"),
            "cannot tell": verdicts.count("cannot tell at this size")}


def training_summary(records: Mapping[str, dict]) -> pd.DataFrame:
    """One line per named model record (lib.core.cache): from cache, train seconds, training examples,
    loss by epoch (4 decimals) when the record's metrics have them."""
    lines = []
    for name, record in records.items():
        metrics = record["metrics"]
        line = {"model": name, "from cache": record["cached"], "train seconds": round(metrics["train_seconds"], 1)}
        for key in ("train_pairs", "train_images"):
            if key in metrics:
                line[key.replace("_", " ")] = metrics[key]
        if "epoch_losses" in metrics:
            line["loss by epoch"] = [round(v, 4) for v in metrics["epoch_losses"]]
        lines.append(line)
    return pd.DataFrame(lines).set_index("model")
