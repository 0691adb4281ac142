"""nubo's tests: `unit/` needs no service, `integration/` mirrors `nubo/` on the real stores, `helpers/` is
shared by both (and by `bench/`)."""
