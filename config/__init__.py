"""Label sets and the labeling template, shipped inside the package as ``sedna_sam.config``
(package data, read with :mod:`importlib.resources`; see :func:`sedna_sam.labels.config_file`)."""
