"""The operating system under a run, torch-free: signals, whole files, the run lock, SLURM's environment.
The bottom floor: imports nothing of the template but errors."""
