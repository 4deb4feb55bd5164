"""The merge engine: checkpoints in and out, the pool, the registered methods, plans, models.

The flow inside it is one-directional: ``checkpoints -> pool -> merge -> model``. Nothing here
imports the analysis, the zoo or the lab.
"""
