"""The Redis cache engine: schema-checked collections of hot row copies, indexed, filtered and kept under a budget.

One module per part, imported by their full path (this package re-exports nothing):

* :mod:`~nubo.stores.cache.schema` — the collection definitions, their field types, validation and encoding;
* :mod:`~nubo.stores.cache.filter` — the MongoDB-style filter language and its index plans;
* :mod:`~nubo.stores.cache.scripts` — the Lua scripts every change and read runs, and their runner;
* :mod:`~nubo.stores.cache.collection` — :class:`RedisCache` and the CRUD of one collection (its key layout);
* :mod:`~nubo.stores.cache.admin` — inspection, integrity audit and Redis memory figures (CLI, tests, bench);
* :mod:`~nubo.stores.cache.governor` — the memory governor that purges least recently used elements.
"""
