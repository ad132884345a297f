"""The inference worker: the model, per-session KV caches, attention capture and generation, hosted in Ray actors.

Layout: `engine/` runs the model; `generation` drives one reply against the tracker's Generate stream; `sessions`
holds the KV caches under a memory budget; `jobs` (exactly-once consumption) and `affinity` (which worker runs a
session's jobs) take jobs from Redis; `snapshots` and `snapshot_io` save and restore caches through the snapshot
service; `clients` are the thin gRPC clients; `worker` ties one worker together; `actor` hosts it in Ray; `driver`,
`server` and `metrics` are the control plane of `python -m services.inference` (settings in `config`).
"""
