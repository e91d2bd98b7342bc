"""sedna-sam: corner cases from an edge fleet -> SAM pre-annotation -> Label Studio ->
TrainIds labels -> Sedna lifelong learning."""

__version__ = "0.1.0"
