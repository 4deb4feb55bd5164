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
# and **alpha** (the share of the other models before that). With s = 1 and alpha = 1/M you get
# the paper's formula; alpha = 1 is the anchor alone.

# %%
from lwmm_lab.lab import MergeLab
from lwmm_lab.zoo import find_zoo

zoo = find_zoo()
print("models from", zoo)

# %% [markdown]
# The panel below merges the zoo's six strategies, the best one on the target being the
# anchor. Move **alpha** and **start s**: every change re-merges (in milliseconds, on the GPU
# when there is one) and re-scores a preview of the target and source validation images.
#
# - The **schedule** shows the weight each model gets at each depth j.
# - The **readout** compares the merged model with the anchor alone.
# - The **bars** show which classes gain and which lose.
# - The **grid** shows image, ground truth, anchor, merge, and where the merge fixed (green) or
#   broke (red) the anchor's prediction.

# %%
lab = MergeLab(zoo=zoo)
lab

# %% [markdown]
# Things to try:
#
# 1. alpha = 1: the merge is the anchor. alpha = 0 with s at the end: mostly the *other* models.
# 2. Change the **method** to `isotropic` (a plain average): how does it compare?
# 3. Change the **BN rule**: BatchNorm statistics (means and variances of activations) are not
#    weights; `gaussian` merges them as a mixture of distributions.
# 4. **save merge** writes a safetensors file with the full provenance; **show lwmm command**
#    prints the command line that reproduces it.
