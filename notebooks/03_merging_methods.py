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
# # 03 · Merging methods compared (the paper's Tables 2 and 3)
#
# Four ways to combine M models:
#
# | method | what | cost at inference |
# |---|---|---|
# | isotropic | the plain average of every weight | 1 model |
# | fisher | an average weighted, per weight, by each model's Fisher information on source data | 1 model |
# | ensemble | run all M models and average their predictions | **M** models |
# | layerwise | LWMM: averaged shallow layers, the anchor's deep layers | 1 model |
#
# **Table 2**: sort the strategies by their target mIoU, take the best as the anchor, and add the
# others one at a time. Good merging should not fall below the anchor as worse models come in.
# First the strategies fine-tuned from one source model, the paper's setting.

# %%
from lwmm_lab.analysis.comparison import METHODS, add_one_at_a_time, compare
from lwmm_lab.lab.figures import comparison_figure, table_figure
from lwmm_lab.zoo import find_zoo, load_manifest
from lwmm_lab.zoo.manifest import scenario_checkpoints

manifest = load_manifest(find_zoo())
quick = manifest["config"]["quick"]  # the tests run this on a tiny zoo
settings = {"images": 8 if quick else 100, "resolution": tuple(manifest["config"]["resolution"])}
one_source = scenario_checkpoints(manifest, "strategies")  # the best on the target first
rows = add_one_at_a_time(one_source, **settings)
comparison_figure(rows, METHODS, title="One source model: merging more and more")

# %%
table_figure(rows, ["models", "added", "added_miou", *METHODS], "real mIoU as models are added")

# %% [markdown]
# The same with the strategies whose decoders were trained independently (one encoder, six
# random decoder initialisations). Watch isotropic and Fisher: they average every decoder
# tensor, channel by channel, across models whose channels do not correspond. Layer-wise
# averages the early layers only and hands the decoder to the anchor, so it degrades far less.

# %%
independent = add_one_at_a_time(scenario_checkpoints(manifest, "independent"), **settings)
comparison_figure(independent, METHODS, title="Independent decoders: merging more and more")

# %% [markdown]
# **Table 3**: does it matter *which* models you combine? The paper found that mixing kinds of
# strategy (an adversarial one with an entropy one) helps more than two of one kind: they make
# different mistakes. The first model of each pair is the anchor.

# %%
by_name = {e["strategy"]: e["path"] for e in manifest["checkpoints"] if e["path"] in one_source}
pairs = {
    "adversarial + entropy": ["advent", "minent"],
    "two adversarial": ["advent", "adaptsegnet"],
    "two entropy-based": ["minent", "maxsquare"],
    "self-training + entropy": ["selftrain", "minent"],
}
table3 = compare([[by_name[n] for n in pair] for pair in pairs.values()], **settings)
for kind, row in zip(pairs, table3, strict=True):
    row["pair"] = kind
table_figure(table3, ["pair", "models", "best_single", *METHODS], "Kinds of strategy, merged in pairs")

# %% [markdown]
# **What to take away.** Read each chart from left to right as weaker models join. Which
# methods stay at or above the anchor (the first point), and which fall with the models they
# add? Which collapse when the decoders were trained apart, and why does averaging only the
# early layers survive that? The ensemble is the reference that pays M forward passes for
# its score (notebook 04 times it). In the pairs table, does mixing kinds of strategy gain
# more than two of one kind, as the paper's Table 3 found? The findings (notebook 08, claims
# 3, 4 and 5) measure these on the whole zoo, for both families.
