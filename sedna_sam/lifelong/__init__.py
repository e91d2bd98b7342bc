"""Lifelong learning on Sedna's contract: the txt dataset index (:mod:`.data`), fine-tuning
with replay (:mod:`.train`), per-class IoU / mIoU (:mod:`.evaluate`), the deploy gate
(:mod:`.gate`), Sedna's estimator interface (:mod:`.estimator`) and the train and eval workers
(:mod:`.train_worker`, :mod:`.eval_worker`, what both share in :mod:`.worker_env`).

:mod:`.data` imports no torch: the cloud annotation service appends index lines through it.
"""
