"""Gateway delivery benchmark: N concurrent WebSocket clients against a baseline that reads Redis directly."""
