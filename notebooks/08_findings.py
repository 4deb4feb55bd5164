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
# # 08 · Do the papers' claims hold here? A findings report
#
# A lab should let you test what a paper says. Below, eleven claims of the layer-wise merging
# paper, one of the multi-target paper and one of ours are measured on the zoo: the claim, the
# paper's figure, ours, whether it holds (**yes**, **partly**, **no**), what we think explains
# it, and the command that reproduces it.
#
# Every claim is measured on each family it applies to: the strategies fine-tuned from **one
# source model**, and those with **independent decoders** (one pre-trained encoder, decoders
# from their own seeds). Read the "no"s as results, not failures: which claims hold in which
# regime, and why, is itself a lesson about when merging helps.

# %%
from lwmm_lab.analysis.findings import measure, summary_rows
from lwmm_lab.lab.figures import comparison_figure, table_figure
from lwmm_lab.zoo import find_zoo, load_manifest

zoo = find_zoo()
quick = load_manifest(zoo)["config"]["quick"]
findings = measure(zoo, images=8 if quick else 100)
rows = summary_rows(findings)
table_figure(rows, list(rows[0]), "The claims, measured on this zoo")

# %% [markdown]
# Each claim in full, with its explanation:

# %%
for f in findings:
    print(f"{f.number:>2}. {f.claim} ({f.source})\n    paper: {f.paper}")
    for family, r in f.results.items():
        print(f"    {family}: [{r.holds}] {r.ours}\n      why: {r.why}")
    print(f"    run: {f.command}\n")

# %% [markdown]
# Claim 4 (Table 2) in both regimes: the strategies merged one at a time, best first.

# %%
strategy_merging = next(f for f in findings if f.number == 4)
methods = ["isotropic", "fisher", "ensemble", "layerwise"]
one_source = strategy_merging.results["strategies"].details["rows"]
comparison_figure(one_source, methods, title="One source model: merging more and more")

# %%
independent = strategy_merging.results["independent"].details["rows"]
comparison_figure(independent, methods, title="Independent decoders: merging more and more")

# %% [markdown]
# ## How sure are we? Several builds of the zoo
#
# Many of the differences above are a few tenths of a point. One build of the zoo cannot tell
# them from noise: train it again with another seed (other initial weights, another data order)
# and a verdict may flip. `lwmm findings --seeds 0 1 2` builds (or reuses) one default zoo per
# seed and gives each claim's key figure as a mean and spread over the builds, with a verdict
# only where every build agrees. It also scores the first build once more on another val set
# of the same size: how much of the spread is evaluation noise rather than training noise.
#
# Below, the builds this machine has (the zoo above is seed 0), for three claims.

# %%
from lwmm_lab.analysis.findings import measure_seeds
from lwmm_lab.lab.figures import spread_figure
from lwmm_lab.zoo.manifest import default_zoo_dir

others = [default_zoo_dir(False, k) for k in range(1, 10)]
zoos = {0: zoo} | {
    k: d for k, d in enumerate(others, 1) if not quick and (d / "manifest.json").is_file()
}
seeded, facts = measure_seeds(
    sorted(zoos), images=8 if quick else 100, only=[4, 9, 13], build=zoos.__getitem__
)
spread_figure(seeded, f"Claims 4, 9 and 13 over {len(zoos)} build(s) of the zoo")
