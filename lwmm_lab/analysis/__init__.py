"""Analysis: evaluation, per-layer discrepancy, sweeps, method comparisons, qualitative results,
and the papers' findings measured on the zoo."""
