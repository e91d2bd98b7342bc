"""Edge side of the loop: segment frames, score corner cases, buffer and ship them.

scorers (logits -> corner-case score), sources (frames), worker (the inference loop),
buffer (bounded local store of flagged samples), shipper (loss-free upload), calibrate
(threshold from known data).
"""
