"""A fork whose batch is a dict of two inputs into a two-branch model (tests/test_dict_fork.py), kept as a
forker writes it: its parts in two_inputs.py, its configs under conf/ (put in the project's conf/ by a fork;
found here through hydra.searchpath)."""
