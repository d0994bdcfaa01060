"""A run's files: the run directory and its names, checkpoints (the one owner of their format), resume,
init_from and load_trained. Imports setup/ and system/; never the loop."""
