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
# # 04 · Other class sets, other decoders (the paper's Tables 4 and 5)
#
# What if the models do not even have the same shape?
#
# - A model trained on SYNTHIA-like data knows **16 classes**: its last layer has 16 outputs,
#   not 19. Its head cannot be averaged with a 19-class head.
# - An FPN or a DeepLabV3+ shares the **encoder** with a Unet, but not the decoder.
#
# The merge engine aligns tensors by name and shape: only the **shared** ones are merged, the
# rest comes from the anchor. So the merged model is always the anchor's architecture, as fast
# as the anchor. The ensemble has to run every model.
#
# Like the paper's Table 4 models, these share only the pre-trained encoder: the 16-class model
# and the FPN and DeepLabV3+ trained their decoders from scratch. The anchor is the MinEnt Unet
# of the independent family, which did the same.

# %%
from lwmm_lab.analysis.comparison import heads_and_decoders
from lwmm_lab.lab.figures import rows_figure, table_figure
from lwmm_lab.zoo import find_zoo, load_manifest
from lwmm_lab.zoo.manifest import scenario_checkpoints

manifest = load_manifest(find_zoo())
quick = manifest["config"]["quick"]
settings = {"images": 8 if quick else 100, "resolution": tuple(manifest["config"]["resolution"])}
anchor, sixteen = scenario_checkpoints(manifest, "other-classes")
classes = heads_and_decoders(anchor, [sixteen], **settings)
rows_figure(classes, "A 19-class anchor with a 16-class model (mIoU; bar labels: ms per image)")

# %%
table_figure(classes, ["name", "kind", "miou", "ms_per_image"], "Different class sets")

# %% [markdown]
# Now three decoders on one encoder, the Unet as the anchor.

# %%
anchor, *decoders = scenario_checkpoints(manifest, "other-decoders")
table = heads_and_decoders(anchor, decoders, **settings)
rows_figure(table, "Unet anchor with FPN and DeepLabV3+ (mIoU; bar labels: ms per image)")

# %% [markdown]
# Which tensors are actually averaged? `make_plan` lists every entry of the anchor with its
# kind: `shared` tensors are merged, `anchor-only` ones (the anchor's own decoder and head,
# which the others lack) come from the anchor. The other models' decoders are left out: the
# merge has the anchor's structure. The plan's notes count both.

# %%
from collections import Counter

from lwmm_lab import Pool, make_plan

plan = make_plan(Pool([anchor, *decoders], device="cpu"))
print(*plan.notes(), sep="\n")
Counter((row["kind"], row["name"].split(".")[0]) for row in plan.rows())

# %% [markdown]
# **What to take away.** Merging needs only *some* shared tensors: the merge is the anchor's
# architecture, with the shared ones averaged and the rest its own, so it runs at the anchor's
# speed (compare the bar labels, ms per image) while the ensemble runs every model. Then
# compare the scores: how much of what the ensemble gains does a merge keep, when the models
# share nothing but their encoder? What would they have to share for the merge to keep more?
# The findings (notebook 08, claims 6, 7 and 11) measure this on the whole zoo.
