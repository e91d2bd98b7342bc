"""Pre-annotation: SAM masks (sam.py) + a semantic model (semantic.py) + per-mask labels
(labelers.py, SSA's voting in voting.py) -> SSA documents (engine.py), over files and folders
(batch.py) and shards of a dataset (shards.py)."""
