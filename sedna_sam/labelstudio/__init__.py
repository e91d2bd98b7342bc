"""Label Studio integration: start a local server (:mod:`.server`), push tasks and pull
exports through its API (:mod:`.client`), the interactive SAM backend (:mod:`.backend`)."""
