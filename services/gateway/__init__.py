"""The gateway: WebSocket chat relay, REST API, session auth and the static web UI (DESIGN.md section 4)."""
