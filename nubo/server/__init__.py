"""HTTP and WebSocket layer: the Litestar app, its routes, auth, realtime and error mapping."""
