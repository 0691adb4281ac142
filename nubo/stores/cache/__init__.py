"""The Redis cache engine: schema-checked collections of hot row copies, indexed, filtered and kept under a budget.

One module per part, imported by their full path (this package re-exports nothing):

* :mod:`~nubo.stores.cache.schema` — the collection definitions, their field types, validation and encoding;
* :mod:`~nubo.stores.cache.filter` — the MongoDB-style filter language and its index plans;
* :mod:`~nubo.stores.cache.collection` — :class:`RedisCache`, the CRUD of one collection, inspection and audit;
* :mod:`~nubo.stores.cache.governor` — the memory governor that purges least recently used elements.
"""
