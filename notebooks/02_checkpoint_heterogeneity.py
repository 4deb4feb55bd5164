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
# # 02 · How different are the checkpoints? (the paper's Fig. 2)
#
# Before merging, look at what you merge. For a **reference** model and each other model, take
# every tensor θ⁽ʲ⁾ at depth j and measure how far it moved: the relative distance
# ‖θ − θ_ref‖ / ‖θ_ref‖. The paper calls a tensor *discrepant* when that distance reaches
# **1/τ**: a larger **τ** flags smaller changes.
#
# Two scenarios:
#
# - **checkpoint**: the first checkpoint of one training run against its later ones;
# - **heterogeneous**: the best model against models trained with other UDA strategies.
#
# The paper's observation: the backbone's convolution weights barely move; the discrepancy
# lives in the **head** and in the **BatchNorm running statistics**, which follow the data
# each model saw. Check whether the zoo agrees, by tensor kind and by region.

# %%
from lwmm_lab.lab import DiscrepancyExplorer
from lwmm_lab.zoo import find_zoo

zoo = find_zoo()
explorer = DiscrepancyExplorer(zoo=zoo, scenario="checkpoint", run="advent", tau=20)
explorer

# %% [markdown]
# Switch the **scenario** to `heterogeneous`: do different strategies differ more than the
# checkpoints of one run? Filter the **kinds** to see weights alone, or BN statistics alone,
# and switch the **family** between the strategies fine-tuned from one source model and those
# with independently trained decoders.
#
# The two families side by side, each against its best model. On the left, decoders that
# started as the same decoder; in the middle, decoders that started from different random
# seeds; on the right, the same independent decoders after **alignment**: each model's
# decoder channels are permuted to match the anchor's (weight matching), which changes nothing
# about what the models compute, only the order their channels are stored in.

# %%
from lwmm_lab import Pool
from lwmm_lab.analysis.discrepancy import LEARNED, discrepancy
from lwmm_lab.lab.figures import discrepancy_comparison_figure
from lwmm_lab.zoo import load_manifest, preset

manifest = load_manifest(zoo)
panels = {}
for title, family, align in (
    ("one source model", "strategies", None),
    ("independent decoders", "independent", None),
    ("independent, aligned", "independent", 0),
):
    reference, others = preset(manifest, "heterogeneous", family=family)
    panels[title] = discrepancy(Pool([reference, *others], device="cpu", align=align))
    median = panels[title].median(("decoder", "head"), LEARNED)
    print(f"{title}: median relative distance of the decoder's weights {median:.3f}")
discrepancy_comparison_figure(panels, tau=20)

# %% [markdown]
# Read the decoder part (right of the dotted line) and the medians printed above. Decoders that
# started as one decoder end up a few percent apart; decoders that started from different seeds
# are about as far apart as two unrelated tensors of equal norm (a relative distance near
# √2 ≈ 1.41). Alignment can only reorder channels: how much closer does it bring them? That is
# how much of their difference was just the order of their channels. Averaging the middle
# panel's decoders is what makes a plain average collapse (notebook 01).
#
# Two data-free diagnostics go further. The **BN divergence** compares the Gaussians that the
# running mean and variance describe, per channel. The **task vector** of a model is what it
# learned on top of the shared base (θ − θ_base): where the task vectors of two models point
# the same way (cosine near 1), averaging them is safe; where they disagree, the anchor should
# keep its own.

# %%
from lwmm_lab.analysis.discrepancy import bn_divergence, suggest_start, task_vector_cosine
from lwmm_lab.lab.figures import bn_divergence_figure, task_vector_figure
from lwmm_lab.zoo import base_checkpoint

reference, others = preset(manifest, "heterogeneous")
pool = Pool([reference, *others], device="cpu", base=base_checkpoint(manifest))
bn_divergence_figure(bn_divergence(pool))

# %%
cosines = task_vector_cosine(pool)
task_vector_figure(cosines, suggest_start(cosines, pool.layout().n_depth))

# %% [markdown]
# Everything so far compares weights. What the models *do* between one another is measured on
# the straight line from model a to model b: θ(t) = (1 − t)·θ_a + t·θ_b, scored at evenly
# spaced t from 0 (model a) to 1 (model b); t = 0.5 is their plain average. Two models in one
# basin of the loss are about as good everywhere on that line as at its ends. Two that are
# not fall in between: how far the curve falls below the dotted line joining its ends is the
# **barrier** (*linear mode connectivity*, Frankle et al., 2020). AdvEnt to MinEnt in each
# family, and once more with MinEnt's decoder channels aligned to AdvEnt's first:

# %%
from lwmm_lab.analysis.interpolation import linear_path
from lwmm_lab.lab.figures import linear_path_figure
from lwmm_lab.zoo.manifest import family_run, final

quick = manifest["config"]["quick"]  # the tests run this on a tiny zoo
paths = {}
for title, family, align in (
    ("one source model", "strategies", False),
    ("independent decoders", "independent", False),
    ("independent, aligned", "independent", True),
):
    a, b = (final(manifest, family_run(family, s)) for s in ("advent", "minent"))
    paths[title] = linear_path(
        a, b, steps=5 if quick else 11, images=8 if quick else 100, align=align
    )
linear_path_figure(paths, "real")

# %% [markdown]
# The legend gives each barrier. A flat line says any average of the two models is as good
# as either, which is why a plain average works on the one-source family. A deep valley says
# that their average is a model neither of them is: layer-wise merging stays near the
# anchor's end of it, averaging the shallow layers, where the two agree, and handing the deep
# ones to the anchor. Does alignment fill the valley, or only make it shallower? Is the fall
# in the BatchNorm statistics or in the weights? Run the independent pair again with
# `bn="gaussian"`, which merges the statistics as a mixture (notebook 06), or with
# `reestimate="real"`, which measures them anew at every point on unlabelled target images,
# and compare the barriers.

# %% [markdown]
# **What to take away.** Look at what you merge before you merge it. Where two models differ
# only a little, and only in the head and the BN statistics (the paper's Fig. 2), the backbone
# can be averaged and the anchor should keep the rest: that is what layer-wise merging does.
# Where whole decoders are far apart (the middle panel of the three), the straight line
# between them falls into a valley, and no average of them is safe unless aligning their
# channels fills it (the last figure shows how much it does). The task-vector cosines
# suggest where the anchor should take over: compare that start layer with what notebook
# 05's sweep finds for the same family.
# The findings (notebook 08, claims 1, 2 and 12) measure all this on the whole zoo.
