"""bench/tracker: per-step update latency (frame in, Redis updated, events appended) and attention aggregation."""
