"""Running under kubeedge/sedna's own lib (``sedna.core.lifelong_learning.LifelongLearning``).

When Sedna's lib is installed (our images install it with scripts/install-sedna-lib.sh)
and a LifelongLearningJob started the process, each worker hands its work to the lib, so
that the knowledge base, the reports to the local controller and the deployment go the
way Sedna's global manager and local controller expect:

========  ====================================================================================
train     ``LifelongLearning.train``: round 1 trains our estimator on the round's samples; later
          rounds (HAS_COMPLETED_INITIAL_TRAINING=true) go through ``update``, which loads the
          previous model from the knowledge base (CLOUD_KB_INDEX) and fine-tunes it. The lib
          saves the model (one archive file, :mod:`sedna_sam.model_files`), uploads it to the KB
          server, writes OUTPUT_URL/index.pkl and reports it to the local controller.
eval      Our own evaluation (per-class IoU on new and old domains, the deploy gate) of the model
          the train round's index names; the decision is expressed in the report: an accepted
          model's index is reported (the local controller deploys it), a rejected one is not.
          Exit status 0 either way: Sedna restarts failed pods forever.
inference ``LifelongLearning.inference`` per frame with our corner-case scorer as the
          unseen-sample recognition plug-in; flagged frames go to our buffer and shipper.
========  ====================================================================================

:mod:`.runtime` holds what every role needs from the lib (env defaults, the scratch
directory, reports, a clean exit); :mod:`.plugins` our algorithms, registered in Sedna's
``ClassFactory`` by name and chosen in :func:`.runtime.lifelong_learning`; :mod:`.kb` reads
knowledge-base indexes. Nothing here is imported unless the lib is present.
"""
