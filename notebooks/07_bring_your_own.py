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
# # 07 · Bring your own checkpoints and data
#
# Everything in the lab works on real files too:
#
# - checkpoints: `.safetensors`; `.pt/.pth/.bin` and Lightning's `.ckpt` (read only with
#   `torch.load(weights_only=True)`), mmseg/DAFormer files (`model.` student, `ema_model.`
#   teacher, `imnet_model.`), `module.` prefixes, and directories written by smp's
#   `save_pretrained`;
# - datasets: Cityscapes, GTA5 and SYNTHIA folders in their own layouts.
#
# Set the paths below to your files. Without them, this notebook writes small stand-ins in the
# exact same layouts (a DAFormer-style `.pth`, an smp directory, a Cityscapes folder) so that
# every step runs.

# %%
import tempfile
from pathlib import Path

from lwmm_lab.fixtures import cityscapes_folder, daformer_checkpoint, smp_directory
from lwmm_lab.zoo import find_zoo, load_manifest, select

MY_CHECKPOINTS: list[str] = []  # e.g. ["/models/daformer_iter_40000.pth", "/models/advent_unet"]
MY_CITYSCAPES = None  # e.g. "/data/cityscapes"

if not MY_CHECKPOINTS or MY_CITYSCAPES is None:
    manifest = load_manifest(find_zoo())
    finals = {e["strategy"]: e["path"] for e in select(manifest, scenario="strategies", fraction=1.0)}
    scratch = Path(tempfile.mkdtemp(prefix="lwmm-byo-"))
    MY_CHECKPOINTS = [
        str(daformer_checkpoint(scratch / "daformer_iter_40000.pth", finals["selftrain"])),
        str(smp_directory(scratch / "advent_smp", finals["advent"])),
    ]
    MY_CITYSCAPES = str(cityscapes_folder(scratch / "cityscapes", images=6))
MY_CHECKPOINTS, MY_CITYSCAPES

# %% [markdown]
# A pickle from another code base does not say which architecture it holds (safetensors files
# written by lwmm_lab and smp directories do). Attach the spec when you know it, here the one of
# the smp directory, whose model the DAFormer file also holds. A spec the tensors do not fit is
# refused here, naming the first tensor that differs.

# %%
from lwmm_lab import load_checkpoint

smp_model = load_checkpoint(MY_CHECKPOINTS[1])
daformer = load_checkpoint(MY_CHECKPOINTS[0]).with_spec(smp_model.spec)  # the student, model.
print(daformer.label, len(daformer.tensors), "tensors;", smp_model.label, smp_model.spec.arch)

# %% [markdown]
# To use such a file everywhere (the panels, the `lwmm` commands, as the anchor), write a copy
# that carries the spec once: `convert_checkpoint`, or `lwmm convert` in a terminal. It also
# records the image size the model was trained at, which the lab and sweeps then score at.
# The spec is given as a `ModelSpec`, or in the terminal as JSON or a checkpoint that has one.

# %%
from lwmm_lab import ModelSpec, convert_checkpoint

print(ModelSpec("Unet", "resnet50", 19))  # what a spec of your own looks like
converted = Path(tempfile.mkdtemp()) / "daformer.safetensors"
CONVERTED = str(
    convert_checkpoint(MY_CHECKPOINTS[0], converted, spec=smp_model.spec, resolution=(96, 192))
)
load_checkpoint(CONVERTED).provenance

# %% [markdown]
# Before merging, see how far apart the checkpoints are, layer by layer, as in notebook 02: the
# explorer takes your files (the first is the reference), and its path box adds more.

# %%
from lwmm_lab.lab import DiscrepancyExplorer

DiscrepancyExplorer(MY_CHECKPOINTS, tau=20)

# %% [markdown]
# Then the **plan**: a dry run that lists every tensor, its kind, its depth j, the weight each
# model gets and where its value comes from. Nothing is written yet.

# %%
from lwmm_lab import Pool, make_plan

pool = Pool([smp_model, daformer], device="auto")
plan = make_plan(pool, anchor=0, start_frac=0.5, alpha=0.5, bn="gaussian")
print(plan.format()[:1500])

# %% [markdown]
# Then merge, save (with provenance: the inputs and their sha256, every setting), and evaluate
# on the Cityscapes folder by the Cityscapes convention (one confusion matrix over the split).

# %%
from lwmm_lab import load_model, save_merge
from lwmm_lab.data.datasets import open_dataset
from lwmm_lab.analysis.evaluation import evaluate

merged = save_merge(pool, Path(tempfile.mkdtemp()) / "merged.safetensors", plan.config)
print(load_checkpoint(merged).provenance["inputs"])
cityscapes = open_dataset(f"cityscapes:{MY_CITYSCAPES}", "val", resolution=(96, 192))
{
    name: round(evaluate(load_model(model, "cpu"), cityscapes).miou, 2)
    for name, model in [("smp model", smp_model), ("DAFormer student", daformer), ("merged", merged)]
}

# %% [markdown]
# Now slide the knobs on your own data. The MergeLab and the sweep explorer take your files and
# score them on your Cityscapes folder, `target="cityscapes:PATH"`, at the `resolution` your
# models were trained at (the stand-ins: 96 x 192; a DAFormer or AdvEnt model on Cityscapes:
# `(512, 1024)` or so, on a GPU). Name your source too, `source="gta5:PATH"`, to watch what the
# merge keeps of it; `source=None` scores the target alone. The anchor must be a file that
# carries its spec: the converted copy (first, so the anchor) or the smp directory here.

# %%
from lwmm_lab.lab import MergeLab, SweepExplorer

lab = MergeLab(
    [CONVERTED, MY_CHECKPOINTS[1]],
    target=f"cityscapes:{MY_CITYSCAPES}",
    source=None,
    resolution=(96, 192),
    preview=8,
)
lab

# %% [markdown]
# The sweep explorer sweeps the lab's models, anchor and method over s and alpha, scored where
# the lab scores; click a cell to load that merge into the lab above. Scores are
# cached by the files' contents, so a second run of the same sweep is read back, and one after
# a label file changed is scored again.

# %%
SweepExplorer(lab, steps=5, images=8)

# %% [markdown]
# The same from a terminal (files that carry their spec):
#
# ```bash
# lwmm convert daformer_iter_40000.pth --spec my_smp_dir --size 512 1024 -o daformer.safetensors
# lwmm convert my_model.pth --spec '{"arch": "Unet", "encoder": "resnet50", "classes": 19}' -o mine.safetensors
# lwmm inspect my_smp_dir other.safetensors --start-frac 0.5 --alpha 0.5 --bn gaussian
# lwmm merge   my_smp_dir other.safetensors --start-frac 0.5 --alpha 0.5 --bn gaussian -o merged.safetensors
# lwmm eval    my_smp_dir merged.safetensors --domain cityscapes:/data/cityscapes --size 512 1024
# lwmm sweep   my_smp_dir other.safetensors --domains cityscapes:/data/cityscapes gta5:/data/gta5 \
#              --size 512 1024 --html sweep.html
# ```
