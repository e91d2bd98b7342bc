"""Lifelong learning on Sedna's contract: the txt dataset index (:mod:`.data`), fine-tuning
with replay (:mod:`.train`), per-class IoU / mIoU (:mod:`.evaluate`), the deploy gate
(:mod:`.gate`) and Sedna's estimator interface plus the train/eval workers (:mod:`.estimator`).

:mod:`.data` imports no torch: the cloud annotation service appends index lines through it.
"""
