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
# paper (and one of the multi-target paper) are measured on the zoo: the claim, the paper's
# figure, ours, whether it holds (**yes**, **partly**, **no**), what we think explains it, and
# the command that reproduces it.
#
# Read the "no"s as results, not failures. The zoo is small models trained for minutes on
# synthetic scenes, all from one base: some effects need models that differ more than ours do.
# Which ones, and why, is itself a lesson about when merging helps.

# %%
from lwmm_lab.analysis.findings import measure, to_json
from lwmm_lab.lab.figures import comparison_figure, table_figure
from lwmm_lab.zoo import find_zoo, load_manifest

zoo = find_zoo()
quick = load_manifest(zoo)["config"]["quick"]
findings = measure(zoo, images=8 if quick else 100)
rows = to_json(findings)
table_figure(rows, ["number", "source", "holds", "ours"], "The claims, measured on this zoo")

# %% [markdown]
# Each claim in full, with its explanation:

# %%
for f in findings:
    print(f"{f.number:>2}. [{f.holds}] {f.claim} ({f.source})\n    paper: {f.paper}")
    print(f"    ours:  {f.ours}\n    why:   {f.explanation}\n    run:   {f.command}\n")

# %% [markdown]
# The strongest result, claim 4 (Table 2): merging the strategies one at a time, best first.

# %%
strategies = next(f for f in findings if f.number == 4)
comparison_figure(strategies.details["rows"], ["isotropic", "fisher", "ensemble", "layerwise"])
