"""purification-lab: adversarial purification reimplemented and evaluated under one harness.

lib is six packages; a module may import from its own package and the ones before it, never after:

    core ← attacks ← models ← defenses ← eval ← run

- core: settings and input checks, the embedded data set and loaders, the model cache, provenance, result
  rows, the purifier contract (what every defense implements and every threat model relies on), the one
  trainer contract and `fit` loop, the papers' reference numbers.
- attacks: the attack registry (torchattacks where it has the attack), the one L∞ PGD, the feature-distortion
  attack, threat models (BPDA, EOT), stored attack sets, the papers' adaptive attacks. Attacks see only
  modules and the purifier contract, so models and defenses can train with them.
- models: target classifiers, their training recipes, the cached zoo, layer hooks.
- defenses: fixed transformations, the learned baselines, one module per paper method, the registry.
- eval: result rows from attacks under threat models, sanity checks, analyses, protocols.
- run: the notebook run context, plotting, the papermill driver.
"""
LAYERS = ("core", "attacks", "models", "defenses", "eval", "run")
