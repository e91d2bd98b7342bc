"""Label Studio integration: one HTTP stack (:mod:`.http`), its REST calls (:mod:`.api`),
pushing tasks and pulling exports (:mod:`.client`), labeling configs (:mod:`.label_config`),
a local server (:mod:`.server`) and the interactive SAM backend (:mod:`.backend`,
:mod:`.interactive`, :mod:`.image_source`, :mod:`.connect`)."""
