# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Where should the anchor take over? (the paper's Fig. 5)
#
# Two models, an adversarial one (AdvEnt) as the anchor and an entropy one (MinEnt), both from
# the family with independently trained decoders (on the one-source family every cell of the
# sweep is within a few tenths of a point: try it with `family = "strategies"`). The
# **start layer s** says where the weight of the other model starts to decay towards zero;
# **alpha** is the anchor's weight before that (for two models: θ = α·θ₁ + (1 − α)·θ₂, with θ₁
# the anchor).
#
# The paper reports that starting the decay later hurts the target while the source stays
# stable, and that α = 0.5 (a plain average of the early layers) is best. A sweep measures
# both mIoUs on a grid of (s, α); clicking a cell of the heat map loads that merge into the
# MergeLab below it.

# %%
from lwmm_lab.lab import MergeLab, SweepExplorer
from lwmm_lab.zoo import find_zoo, load_manifest
from lwmm_lab.zoo.manifest import family_run, final

zoo = find_zoo()
manifest = load_manifest(zoo)
quick = manifest["config"]["quick"]
family = "independent"
pair = [final(manifest, family_run(family, s)) for s in ("advent", "minent")]
lab = MergeLab(pair, zoo=zoo)
sweep = SweepExplorer(lab, steps=3 if quick else 11, images=8 if quick else 50)
sweep

# %% [markdown]
# Press **run** (a cached sweep is read back instantly), then click a cell. The sweep takes
# the lab's models, anchor, method and BN rule as they are when you press run, and a click
# brings them all back: switch the lab to `ties` (layer-wise TIES) or `fisher`, run again, and
# compare the two heat maps.

# %%
lab

# %% [markdown]
# The same sweep as curves: the target and the source mIoU against s at α = 0.5 (the paper's
# Fig. 5b), and against α at s = 1 (Fig. 5c). Not against s at the best α: where the anchor
# alone scores best (α = 1), every s gives the same merge, the anchor, and the curve is flat.

# %%
from lwmm_lab.lab.figures import sweep_curves
from lwmm_lab.analysis.sweeps import run_sweep

result = run_sweep(sweep.cells(), progress=False)
sweep.load(result)
sweep_curves(result, ["real", "synthetic"])

# %% [markdown]
# **What to take away.** Read the left panel against the paper's Fig. 5b: does the target
# fall as s moves deeper while the source stays flat? Then the right one against Fig. 5c: is
# α = 0.5 at or near the best? With decoders trained apart (this family), averaging the early
# layers mixes unrelated weights, so the anchor may do best on its own; with
# `family = "strategies"` the two models are nearly interchangeable and both curves flatten.
# The findings (notebook 08, claims 8 and 9) measure both on the whole zoo.
