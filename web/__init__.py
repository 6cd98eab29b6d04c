"""The aiohttp sidecar (WebSocket streams, REST queries): see the sidecar issue; nothing here yet."""
