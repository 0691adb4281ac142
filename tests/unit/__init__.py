"""Unit tests: pure rules, parsing, schemas and settings. No PostgreSQL, Redis, Mongo or server process, so
`pytest tests/unit` runs in seconds with every service stopped."""
