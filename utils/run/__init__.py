"""A run's life and its files: signals, the run directory and its lock, checkpoints, resume, SLURM."""
