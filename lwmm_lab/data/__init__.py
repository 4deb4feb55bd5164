"""Data: Cityscapes label conventions, procedural street scenes in five domains, and datasets.

``layout`` samples what is in a scene, ``raster``, ``street`` and ``things`` draw it, ``domains``
render it in a domain's style, ``datasets`` serve it (and real datasets from disk) to models,
``batches`` reads any of them for scoring, refusing what would be scored as garbage.
"""
