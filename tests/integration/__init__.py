"""Integration tests on the real stores and real `nubo serve` processes; the tree mirrors `nubo/` (the tests
of `nubo/x/y.py` are in `integration/x/test_y*.py`, those of `nubo/z.py` in `integration/test_z*.py`)."""
