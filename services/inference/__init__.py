"""The inference worker: the model, per-session KV caches, attention capture and generation, hosted in Ray actors.

Layout: `engine/` runs the model; `generation` drives one reply against the tracker's Generate stream; `sessions`
holds the KV caches under a memory budget; `jobs` and `affinity` take jobs from Redis; `snapshots` and `snapshot_io`
save and restore caches through the snapshot service; `worker` ties one worker together; `actor` hosts it in Ray;
`metrics` and `server` are the driver's control plane.
"""
