"""The leaderboard protocol: every defense in front of the same target, attacked the same way, cell by cached cell.

    protocol = board_protocol("quick")
    board = Leaderboard(target, target_record, "natural", surrogate, surrogate_record, x, y, protocol,
                        dataset="shapes10", seed=0)
    board.add("jpeg", purifier, classifier, record)       # every cell comes from the result cache or is computed
    table = board.table()                                 # one ranked row per defense

Per defense, on the same images and seeds (protocol choices after Croce et al. 2022, "Evaluating the adversarial
robustness of adaptive test-time defenses", and Lee and Kim 2023, "Robust evaluation of diffusion-based
adversarial purification"):
- `clean`: accuracy of classifier ∘ purifier, the worst case over `defense_runs` runs of a random defense (an
  image counts only if every run is right; the mean over runs and the majority vote are kept as columns), and
  the purification cost in ms per image;
- `oblivious`: PGD crafted on the target alone, scored through the defense (what most papers report);
- `transfer`: PGD crafted on a separately trained surrogate (named in every row), scored through the defense;
- `adaptive`: full-gradient PGD through the defense as its declaration calls for (lib.eval.sanity's
  `default_threat_model`: white-box when differentiable, BPDA with the defense's own surrogate when not, + EOT
  over `eot_samples` draws when random), with `steps` iterations;
- `autoattack`: the standard version through the defense (deterministic defenses) or the rand version (random
  ones) on the first `n_autoattack` / `n_autoattack_rand` images, where the scale allows it (0: not run);
- `sanity`: lib.eval.sanity's checks on the first `n_sanity` images (the failed ones are named on the board).
The board ranks by adaptive accuracy, ties broken by clean accuracy; `gap` is oblivious − adaptive (the false
security). A defense whose clean accuracy is below twice chance is flagged `collapsed`: its robust accuracy is
the luck of its one answer. The planted control (`CONTROL`, rounding that declares itself differentiable) is
added by the notebook; its failed sanity checks are what a masked gradient looks like.

Every cell is stored in lib.core.result_cache by the hash of (defense spec hash, target spec hash, attack
settings, threat model, images, seed): a second run evaluates nothing, and removing one defense's entries
re-evaluates that defense only. Oblivious and transfer cells share one adversarial set per target, crafted only
when some defense misses its cell (`add_shared`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import nn

from lib.attacks.pgd import default_step_size
from lib.core.dry_run import MAX_DRAWS, MAX_STEPS
from lib.core.purifiers import Identity, is_randomized, purify_batched
from lib.core.reference import paper_numbers
from lib.core.result_cache import ResultCache, result_key
from lib.core.results import accuracy_with_interval, is_collapsed
from lib.core.settings import Scale, get_scale
from lib.eval.evaluation import check_inputs, clean_row, evaluate, evaluate_oblivious
from lib.eval.sanity import MaskedGradientQuantizer, default_threat_model, sanity_checks

VERSION = 1  # part of every cell's key: bump it when the protocol's code changes what a cell means
CONTROL = "masked_gradient_control"
CELLS = ("clean", "oblivious", "transfer", "adaptive", "autoattack")


@dataclass(frozen=True)
class Protocol:
    """What a scale decides for the board (ε in pixel units; the step size 2.5·ε/steps unless given)."""

    n_eval: int  # images per cell
    eps: float
    steps: int  # PGD iterations of the oblivious, transfer and adaptive cells
    eot_samples: int  # gradient draws per step against a random defense
    defense_runs: int  # runs of a random defense at scoring (worst case, mean, vote)
    n_autoattack: int  # images for standard AutoAttack (deterministic defenses); 0: not run
    n_autoattack_rand: int  # images for AutoAttack-rand (random defenses); 0: not run
    n_sanity: int
    sanity_steps: int
    eot_curve: tuple[int, ...]
    step_size: float | None = None
    autoattack_max_ms: float | None = None  # AutoAttack only behind a purifier at most this slow (ms/image); None: all

    @property
    def pgd_step(self) -> float:
        return self.step_size if self.step_size is not None else default_step_size(self.eps, self.steps)


PROTOCOLS = {
    # smoke proves every path runs; its numbers mean nothing
    "smoke": Protocol(n_eval=16, eps=8 / 255, steps=3, eot_samples=2, defense_runs=2, n_autoattack=2,
                      n_autoattack_rand=0, n_sanity=8, sanity_steps=2, eot_curve=(1, 2, 4)),
    # quick: ±10 points at 100 images. EOT 4, checked against 8 by the sanity curve: TVM costs 12 ms an image on 2
    # cores, so each EOT draw costs it minutes. AutoAttack's APGD-T (9 × 100 steps) and Square (5000 queries)
    # multiply the purifier's cost: behind SOAP (11 ms an image) it ran over 7 minutes on 32 images without ending,
    # so at quick it runs behind purifiers of at most 5 ms an image; AutoAttack-rand (2 × 100 steps × 20 draws)
    # does not fit on 2 cores at all
    "quick": Protocol(n_eval=100, eps=8 / 255, steps=20, eot_samples=4, defense_runs=3, n_autoattack=32,
                      n_autoattack_rand=0, n_sanity=32, sanity_steps=5, eot_curve=(1, 4, 8), autoattack_max_ms=5.0),
    "paper": Protocol(n_eval=1000, eps=8 / 255, steps=100, eot_samples=20, defense_runs=5, n_autoattack=1000,
                      n_autoattack_rand=500, n_sanity=500, sanity_steps=20, eot_curve=(1, 10, 20, 40)),
}


def board_protocol(scale: str | Scale) -> Protocol:
    """The scale's protocol; under a dry-run limit (lib.core.dry_run) every count is capped."""
    scale = get_scale(scale)
    protocol = PROTOCOLS[scale.name]
    if not scale.limit:
        return protocol
    images = scale.n_eval
    return dataclasses.replace(
        protocol, n_eval=min(protocol.n_eval, images), steps=min(protocol.steps, MAX_STEPS),
        eot_samples=min(protocol.eot_samples, MAX_DRAWS), defense_runs=min(protocol.defense_runs, MAX_DRAWS),
        n_autoattack=min(protocol.n_autoattack, images), n_autoattack_rand=min(protocol.n_autoattack_rand, images),
        n_sanity=min(protocol.n_sanity, images), sanity_steps=min(protocol.sanity_steps, MAX_STEPS),
        eot_curve=tuple(sorted({min(k, MAX_DRAWS) for k in protocol.eot_curve})))


def protocol_text(p: Protocol) -> str:
    """The protocol as Markdown, for the notebook to print."""
    return "\n".join([
        f"- {p.n_eval} test images, the same for every defense; ε = {p.eps * 255:.0f}/255 (L∞); seeds fixed per cell.",
        f"- oblivious / transfer / adaptive: PGD-{p.steps}, step {p.pgd_step * 255:.2f}/255, random start, best iterate.",
        f"- adaptive: white-box through a differentiable defense, BPDA otherwise; random defenses with EOT over "
        f"{p.eot_samples} draws per gradient and scored as the worst case over {p.defense_runs} runs (the mean and "
        "the majority vote are kept too).",
        "- AutoAttack: " + (f"standard version on {p.n_autoattack} images (deterministic defenses"
                            + (f" whose purifier takes at most {p.autoattack_max_ms:g} ms an image" if p.autoattack_max_ms
                               else "") + ")" if p.n_autoattack else "standard version not run at this scale") + "; " +
        (f"rand version on {p.n_autoattack_rand} images (random defenses)." if p.n_autoattack_rand
         else "rand version not run at this scale (random defenses show —)."),
        f"- sanity checks on {p.n_sanity} images, {p.sanity_steps} steps, EOT curve {'/'.join(map(str, p.eot_curve))}.",
        "- rank: adaptive accuracy, then clean accuracy; gap = oblivious − adaptive (points).",
    ])


def control_purifier() -> nn.Module:
    """The planted gradient-masking defense of lib.eval.sanity (must be flagged by the checks)."""
    return MaskedGradientQuantizer().eval()


# the paper's own number for a defense (or, where its own paper is not in the repository, the number a paper
# here measured for it): (paper folder, table, filters); lib/reference holds the values
CLAIMED = {
    "dir": ("dir", "table1", dict(dataset="CIFAR-10", defense="DIR", attack="pgd")),
    "ape_gan": ("dir", "table1", dict(dataset="CIFAR-10", defense="APE-GAN", attack="pgd")),
    "nrp": ("dir", "table1", dict(dataset="CIFAR-10", defense="NRP", attack="pgd")),
    "jatp": ("dir", "table1", dict(dataset="CIFAR-10", defense="JATP", attack="pgd")),
    "hgd_lgd": ("dir", "table1", dict(dataset="CIFAR-10", defense="HGD", attack="pgd")),
    "menet": ("dir", "table3", dict(defense="ME-Net")),
    "menet_adv": ("dir", "table3", dict(defense="ME-Net-A")),
    "idfr": ("idfr", "table4", dict(defense="IDFR", attack="bim", eps=8 / 255)),
    "comdefend": ("idfr", "table4", dict(defense="ComDefend", attack="bim", eps=8 / 255)),
    "adp": ("idfr", "table4", dict(defense="ADP", attack="bim", eps=8 / 255)),
    "soap": ("idfr", "table4", dict(defense="SOAP", attack="bim", eps=8 / 255)),
    "tvm": ("idfr", "table4", dict(defense="TVM", attack="bim", eps=8 / 255)),
    "jpeg": ("idfr", "table4", dict(defense="JPEG(q=75)", attack="bim", eps=8 / 255)),
    "bit_depth": ("idfr", "table4", dict(defense="Feature Squeezing", attack="bim", eps=8 / 255)),
    "impure": ("impure", "table1", dict(target="ResNet", defense="Defense", attack="pgd")),
    "superres": ("impure", "table2", dict(defense="WD+SR", attack="pgd")),
    "random_resize_pad": ("impure", "table2", dict(defense="Random", attack="pgd")),
    "pixel_deflection": ("impure", "table2", dict(defense="PD+WD", attack="pgd")),
    "rdp": ("rdp", "table3", dict(target="IncRes-v2ens", defense="RDP", threat_model="transfer")),
    "hgd_fgd": ("hgd", "table3", dict(defense="FGD", test_set="white", eps=4 / 255)),
    "hgd_cgd": ("hgd", "table3", dict(defense="CGD", test_set="white", eps=4 / 255)),
    "hgd_pixel_dunet": ("hgd", "table3", dict(defense="PGD", test_set="white", eps=4 / 255)),
}


def claimed(name: str) -> dict:
    """{'claimed': value in %, 'claimed setting': where it comes from}, or empty values when none is on file."""
    if name not in CLAIMED:
        return {"claimed (%)": float("nan"), "claimed setting": ""}
    paper, table, where = CLAIMED[name]
    frame = paper_numbers(paper, table)
    for column, value in where.items():
        frame = frame[(frame[column] - value).abs() < 1e-6] if isinstance(value, float) else frame[frame[column] == value]
    if len(frame) != 1:
        raise LookupError(f"CLAIMED[{name!r}] matches {len(frame)} rows of lib/reference/{paper}/{table}.csv, not one.")
    r = frame.iloc[0]
    keys = [str(r[k]) for k in ("dataset", "target", "threat_model", "attack", "test_set")
            if k in r.index and isinstance(r[k], str) and r[k]]
    eps = f"ε {r['eps'] * 255:.0f}/255" if "eps" in r.index and r["eps"] == r["eps"] else ""
    return {"claimed (%)": float(r["value"]),
            "claimed setting": f"{r['paper']} {r['table']}: " + ", ".join(keys + ([eps] if eps else []))}


class Leaderboard:
    """Defenses in front of one target, each evaluated cell by cell through the result cache."""

    def __init__(self, target: nn.Module, target_record: dict, target_name: str, surrogate: nn.Module,
                 surrogate_record: dict, x: torch.Tensor, y: torch.Tensor, protocol: Protocol, *,
                 dataset: str, seed: int = 0, cache: ResultCache | None = None, surrogate_name: str = "surrogate"):
        self.n_classes = check_inputs(target, x, y)
        if len(y) < max(protocol.n_eval, protocol.n_sanity, protocol.n_autoattack, protocol.n_autoattack_rand):
            raise ValueError(f"The protocol needs {protocol.n_eval} images (n_eval), {protocol.n_sanity} for the sanity "
                             f"checks and {protocol.n_autoattack} for AutoAttack; got {len(y)}: pass more images "
                             "or a protocol with smaller sizes.")
        self.target, self.surrogate, self.p = target.eval(), surrogate.eval(), protocol
        self.target_hash, self.surrogate_hash = target_record["hash"], surrogate_record["hash"]
        self.x, self.y = x[:protocol.n_eval], y[:protocol.n_eval]
        self.target_name, self.surrogate_name, self.dataset, self.seed = target_name, surrogate_name, dataset, seed
        self.cache = cache or ResultCache()
        self.cells: dict[str, dict] = {}  # defense name -> {cell: row}
        self.skipped: dict[str, str] = {}  # defense name -> why its AutoAttack cell was not run
        self.info: dict[str, dict] = {}  # defense name -> display name, kind, citation, defense key
        self.hits = self.computed = 0
        self.seconds: dict[str, float] = {}  # defense name -> wall time spent on its cells in this run

    # ------------------------------------------------------------------------------------------ keys, cells
    def _attack(self, name: str, **more) -> dict:
        p = self.p
        return {"name": name, "eps": p.eps, "steps": p.steps, "step_size": p.pgd_step, "version": VERSION, **more}

    def _cell(self, name: str, cell: str, attack: dict, threat_model: str, n: int, compute: Callable[[], dict]) -> dict:
        key = result_key(defense=self.info[name]["key"], target=self.target_hash, attack=attack,
                         threat_model=threat_model, x=self.x[:n], y=self.y[:n], seed=self.seed)
        row, hit = self.cache.get_or_compute(key, compute)
        self.hits, self.computed = self.hits + hit, self.computed + (not hit)
        self.cells.setdefault(name, {})[cell] = row
        return row

    def register(self, name: str, record: dict, *, display_name: str, kind: str, citation: str = "") -> None:
        """Name a defense on the board; its key is the spec hash of its record (a transform's kwargs and seed)."""
        self.info[name] = {"display_name": display_name, "kind": kind, "citation": citation,
                           "key": {"name": name, "hash": record["hash"]}}

    def _tag(self, name: str) -> dict:
        return dict(defense=name, classifier=self.target_name, dataset=self.dataset, seed=self.seed)

    def add_shared(self, defenses: dict[str, tuple[nn.Module, nn.Module]]) -> None:
        """The oblivious and transfer cells of several defenses: each attack crafted once (on the target, on the
        surrogate) for the defenses that miss the cell, then scored through each of them."""
        p = self.p
        for cell, threat_model, extra in (("oblivious", "oblivious", {}),
                                          ("transfer", "transfer", {"surrogate": self.surrogate_hash})):
            attack = self._attack("pgd", defense_runs=p.defense_runs, **extra)
            missing = {}
            for name, (purifier, classifier) in defenses.items():
                key = result_key(defense=self.info[name]["key"], target=self.target_hash, attack=attack,
                                 threat_model=threat_model, x=self.x, y=self.y, seed=self.seed)
                row = self.cache.get(key)
                if row is None:
                    missing[name] = (purifier, classifier, self.target_name)
                else:
                    self.hits += 1
                    self.cells.setdefault(name, {})[cell] = row
            if not missing:
                continue
            rows = evaluate_oblivious(missing, self.target, self.x, self.y, attack="pgd", threat_model=threat_model,
                                      eps=p.eps, steps=p.steps, step_size=p.pgd_step,
                                      surrogate=self.surrogate if threat_model == "transfer" else None,
                                      defense_runs=p.defense_runs, seed=self.seed, classifier=self.target_name,
                                      dataset=self.dataset, surrogate_name=self.surrogate_name if extra else "")
            for name, row in zip(missing, rows):
                self._cell(name, cell, attack, threat_model, len(self.y), lambda row=row: row)  # stored, counted

    def add(self, name: str, purifier: nn.Module | None, classifier: nn.Module) -> dict:
        """The clean, adaptive, AutoAttack and sanity cells of one registered defense (cached or computed)."""
        start = time.perf_counter()
        p, x, y = self.p, self.x, self.y
        purifier = (purifier or Identity()).eval()
        classifier = classifier.eval()
        random = is_randomized(purifier)
        runs = p.defense_runs if random else 1

        def clean():
            row = clean_row(purifier, classifier, x, y, defense_runs=runs, **self._tag(name))
            begin = time.perf_counter()
            purify_batched(purifier, x, seed=self.seed)
            return {**row, "purify_ms": 1000 * (time.perf_counter() - begin) / len(y)}

        ms = self._cell(name, "clean", self._attack("none", defense_runs=runs), "none", len(y), clean)["purify_ms"]
        threat_model = default_threat_model(purifier)
        eot = p.eot_samples if random else 1
        self._cell(name, "adaptive", self._attack("pgd", eot_samples=eot, defense_runs=runs), threat_model, len(y),
                   lambda: evaluate(purifier, classifier, x, y, attack="pgd", threat_model=threat_model, eps=p.eps,
                                    steps=p.steps, step_size=p.pgd_step, eot_samples=eot, defense_runs=runs,
                                    **self._tag(name)))
        n_aa = p.n_autoattack_rand if random else p.n_autoattack
        if n_aa and p.autoattack_max_ms is not None and ms > p.autoattack_max_ms:
            self.skipped[name] = f"purifier {ms:.1f} ms/image > {p.autoattack_max_ms:g} at this scale"
        elif not n_aa:
            self.skipped[name] = "not run at this scale" + (" (rand version)" if random else "")
        if n_aa and name not in self.skipped:
            version = "autoattack_rand" if random else "autoattack"
            base = threat_model.replace("+eot", "")  # the rand version does its own EOT
            self._cell(name, "autoattack", self._attack(version, defense_runs=runs), base, n_aa,
                       lambda: evaluate(purifier, classifier, x[:n_aa], y[:n_aa], attack=version, threat_model=base,
                                        eps=p.eps, defense_runs=runs, **self._tag(name)))
        n_s = p.n_sanity

        def sanity():
            begin = time.perf_counter()
            table = sanity_checks(purifier, classifier, x[:n_s], y[:n_s], eps=p.eps, steps=p.sanity_steps,
                                  surrogate=self.surrogate, eot_samples=p.eot_samples, defense_runs=p.defense_runs,
                                  seed=self.seed, eot_curve=p.eot_curve)
            failed = table[table.passed == False].check.tolist()  # noqa: E712 (None: skipped)
            return {"failed": ", ".join(failed), "n_failed": len(failed), "n_passed": int((table.passed == True).sum()),  # noqa: E712
                    "n_skipped": int(table.passed.isna().sum()), "seconds": time.perf_counter() - begin,
                    "checks": table.astype({"passed": object}).where(table.notna(), None).to_dict("records")}

        self._cell(name, "sanity", self._attack("sanity", n=n_s, sanity_steps=p.sanity_steps,
                                                eot_curve=list(p.eot_curve), eot_samples=p.eot_samples,
                                                defense_runs=p.defense_runs, surrogate=self.surrogate_hash),
                   threat_model, n_s, sanity)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return self.cells[name]

    # ------------------------------------------------------------------------------------------------ table
    def table(self) -> pd.DataFrame:
        """One row per defense, ranked: accuracies in % with their 95% intervals, the sanity verdict, gap, cost,
        and the claimed number."""
        rows = [board_row(name, self.info[name], cells, self.n_classes, self.target_name, self.surrogate_name,
                          self.skipped.get(name, "")) for name, cells in self.cells.items()]
        return rank(pd.DataFrame(rows))


def _pct(row: dict | None, key: str = "accuracy") -> float:
    return float("nan") if row is None else 100 * float(row[key])


def board_row(name: str, info: dict, cells: dict, n_classes: int, target_name: str, surrogate_name: str,
              autoattack_skipped: str = "") -> dict:
    """The board's row of one defense from its cells (see `Leaderboard.table`)."""
    missing = [c for c in ("clean", "oblivious", "transfer", "adaptive", "sanity") if c not in cells]
    if missing:
        raise ValueError(f"Defense {name!r} has no {missing} cells yet: call Leaderboard.add_shared and .add for it.")
    clean, adaptive, sanity, aa = cells["clean"], cells["adaptive"], cells["sanity"], cells.get("autoattack")
    row = {"defense": info["display_name"], "name": name, "kind": info["kind"], "target": target_name,
           "n": clean["n"], "clean (%)": _pct(clean), "oblivious (%)": _pct(cells["oblivious"]),
           "transfer (%)": _pct(cells["transfer"]), "adaptive (%)": _pct(adaptive),
           "adaptive attack": f"PGD-{adaptive['steps']} {adaptive['threat_model']}"
                              + (f" (EOT {adaptive['eot_samples']})" if adaptive["eot_samples"] > 1 else ""),
           "AutoAttack (%)": _pct(aa), "AutoAttack n": aa["n"] if aa else 0}
    for cell in CELLS:
        if cells.get(cell) is not None:
            row[f"{cell}"] = accuracy_with_interval(cells[cell])
            row[f"{cell} ci"] = [100 * cells[cell]["ci_low"], 100 * cells[cell]["ci_high"]]
        else:
            row[cell], row[f"{cell} ci"] = "—" + (f" ({autoattack_skipped})" if autoattack_skipped else ""), [float("nan")] * 2
    row.update({
        "adaptive mean run (%)": _pct(adaptive, "accuracy_mean_run"),
        "adaptive majority (%)": _pct(adaptive, "accuracy_majority"),
        "sanity": "pass" if not sanity["n_failed"] else f"FAILS: {sanity['failed']}",
        "gap (points)": _pct(cells["oblivious"]) - _pct(adaptive),
        "collapsed": is_collapsed(float(clean["accuracy"]), n_classes),
        "purify ms/image": float(clean.get("purify_ms", float("nan"))),
        "attack s": float(adaptive["seconds"]), "surrogate": surrogate_name,
        "citation": info["citation"], **claimed(name)})
    return row


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Sorted by adaptive accuracy, then clean accuracy (both descending); `rank` 1 is the top."""
    frame = frame.sort_values(["adaptive (%)", "clean (%)"], ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def protocol_dict(p: Protocol) -> dict:
    return {**dataclasses.asdict(p), "step_size": p.pgd_step, "eot_curve": list(p.eot_curve)}
