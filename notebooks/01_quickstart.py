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
# # 01 · Quickstart: merge models with two sliders
#
# You have several segmentation models, all adapted from the same synthetic source (GTA-like
# street scenes) to the same target (Cityscapes-like "real" scenes), each with another
# unsupervised domain adaptation (UDA) strategy. Can you combine them into **one** model that
# is better than each, at no extra inference cost? Weight averaging does that: the merged model
# has the same architecture, so it runs exactly as fast as one model.
#
# **Layer-wise model merging (LWMM)** picks one model as the **anchor** and averages the others
# into it with a weight that depends on the depth of the layer:
#
# - shallow layers (edges, textures) barely differ between the models, so they are averaged;
# - deep layers (the segmentation head) hold each model's task-specific decisions, so they are
#   handed to the anchor more and more, and the last one is the anchor's alone.
#
# Two knobs shape the schedule: the **start layer s** (where the hand-over to the anchor begins)
# and **alpha** (the anchor's share before that; the others share the rest). With s = 1 and
# alpha = 1/M you get the paper's formula; alpha = 1 is the anchor alone.

# %%
from lwmm_lab.lab import MergeLab
from lwmm_lab.zoo import find_zoo

zoo = find_zoo()
print("models from", zoo)

# %% [markdown]
# The zoo holds two families of the same six strategies, and they are the two regimes real
# checkpoints come in:
#
# - **one source model**: every strategy was fine-tuned from one source-only model, decoder
#   included. Such models stay in one "basin" of the loss: any average of them is a good model.
# - **independent decoders**: every strategy started from the same pre-trained *encoder*, but
#   with a fresh decoder from its own random seed, as separately published UDA models do. Their
#   decoders compute similar things with their channels in a different order, and averaging
#   unrelated channels breaks the model.
#
# Here is what that means on this zoo (the best model of each family is the anchor; the last
# two columns first align the decoders' channels, see below):

# %%
from lwmm_lab.analysis.regimes import lesson, summary
from lwmm_lab.lab.figures import table_figure
from lwmm_lab.zoo import load_manifest

quick = load_manifest(zoo)["config"]["quick"]  # the tests run this on a tiny zoo
rows = summary(zoo, images=8 if quick else 100)
print(lesson(rows))
table_figure(rows, list(rows[0]), "real mIoU: the anchor alone, and merges of all six models")

# %% [markdown]
# The panel below opens on the **independent** family, where the knobs bite; the
# **scenario** chooser switches to the one-source strategies (where a plain average is already
# enough), the checkpoints of one run, models with other classes or other decoders, and
# models adapted to other targets. Move **alpha** and **start s**: every change re-merges (in
# milliseconds, on the GPU when there is one) and re-scores a preview of the target and source
# validation images.
#
# - The **schedule** shows the weight each model gets at each depth j.
# - The **readout** compares the merged model with the anchor alone.
# - The **bars** show which classes gain and which lose.
# - The **grid** shows image, ground truth, anchor, merge, and where the merge fixed (green) or
#   broke (red) the anchor's prediction.
# - **BN statistics from target images** throws away the merged BatchNorm statistics and
#   measures new ones on unlabelled target images, for the anchor too, so the two still
#   compare like with like (the readout gives the anchor as it was). Does that rescue the
#   independent family's plain average? (Notebooks 06 and 09 show where it does help.)

# %%
lab = MergeLab(zoo=zoo)
lab

# %% [markdown]
# Things to try:
#
# 1. alpha = 1: the merge is the anchor. alpha = 0 with s at the end: mostly the *other* models.
# 2. Change the **method** to `isotropic` (a plain average), here and on the one-source
#    strategies: where does it collapse, and why there?
# 3. Tick **align decoders**: each other model's decoder channels are permuted to match the
#    anchor's before merging (weight matching, after Git Re-Basin). A permutation does not
#    change what a model computes, only where it keeps what; does the average recover?
# 4. Change the **BN rule**: BatchNorm statistics (means and variances of activations) are not
#    weights; `gaussian` merges them as a mixture of distributions.
# 5. **save merge** writes a safetensors file with the full provenance; **show lwmm command**
#    prints the command line that reproduces it.
