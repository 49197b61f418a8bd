"""The models, one file each (``oad/models/<name>.py``), and the registry of which exist.

Nothing is re-exported here, so that adding a model edits no list: import a model from its own module
(``from oad.models.oadtr import OadTR``), or find it through :mod:`oad.models.registry` (one entry per
``configs/model/<name>.yaml``).
"""
