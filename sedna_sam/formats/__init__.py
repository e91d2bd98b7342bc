"""File formats, one module each, readers beside writers: SSA JSON (ssa), Label Studio
polygon results (labelstudio), exports (ls_export) and image references (ls_images),
TrainIds PNGs (trainids)."""
