"""nubo: the backend of the Nubo social app (REST + realtime over PostgreSQL, MongoDB and Redis)."""

__version__ = "0.1.0"
