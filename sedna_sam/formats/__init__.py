"""File formats, one module each, readers beside writers: SSA JSON (ssa), Label Studio
tasks and exports (labelstudio), TrainIds PNGs (trainids)."""
