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
# # 06 · Several targets, one model: merging BatchNorm statistics
#
# Three copies of one strategy were adapted separately: to clear **real** scenes, to **foggy**
# ones and to **night** ones. Can one merged model serve all three targets, without ever
# seeing the three datasets together?
#
# The weights can simply be averaged: all three start from the same pre-trained base. The
# **BatchNorm statistics** are different: each model's running mean μᵢ and variance σᵢ² describe
# the activations of *its* target domain. Averaging variances ignores how far apart the means
# are. The multi-target paper (Li et al., 2024) models each as a Gaussian and merges them as a
# mixture:
#
# μ = Σ wᵢ μᵢ,  σ² = Σ wᵢ (σᵢ² + (μᵢ − μ)²),
#
# with wᵢ proportional to how many batches each model saw (`gaussian-counts`), or to the merge
# weights (`gaussian`). The baseline to beat: one model adapted on the union of all three
# target datasets.

# %%
from lwmm_lab.analysis.comparison import multi_target
from lwmm_lab.lab.figures import table_figure
from lwmm_lab.zoo import find_zoo, load_manifest
from lwmm_lab.zoo.manifest import final, scenario_checkpoints

manifest = load_manifest(find_zoo())
quick = manifest["config"]["quick"]
settings = {"images": 8 if quick else 100, "resolution": tuple(manifest["config"]["resolution"])}
adapted = scenario_checkpoints(manifest, "multi-target")  # minent on real, foggy, night
union = final(manifest, "minent-union")
rows = multi_target(adapted, union, reestimate=settings["images"], **settings)
table_figure(rows, ["name", "kind", "real", "foggy", "night", "mean"], "mIoU per target domain")

# %% [markdown]
# Questions to ask the table: does `gaussian` beat `linear`? Does any merge come close to the
# union-trained model, which needed all the target data at once? Where is the night domain?
#
# One row is not data-free: **BN re-estimated** keeps the same averaged weights but throws the
# checkpoints' statistics away and measures new ones on unlabelled train images of the three
# targets (AdaBN). No labels are needed, but the images are, so it is the reference for what
# any rule on the checkpoints' own statistics could reach. Does it beat the Gaussian rule, and
# on which domain does it gain the most?
#
# A trap hides in how those images are fed. BatchNorm accumulates, batch after batch, each
# batch's mean and variance. If every batch held one domain only, the variances averaged
# would be the variances *within* each domain, and the spread *between* the domains' means
# would be lost: the very mistake the Gaussian rule corrects. So `train_images` interleaves
# the domains, one image of each in turn, and every batch mixes all three.

# %% [markdown]
# **What to take away.** Only the BN rule differs between the merged rows: the weights are
# the same average each time. So any gap between them is what the running statistics alone
# are worth, and the gap to the union-trained model is what merging costs against training
# on all the target data at once. The findings (notebook 08, claim 10) measure it on the
# whole zoo.
