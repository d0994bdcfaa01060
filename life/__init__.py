"""The top floor: a run's life around the loop (life/run.py: signals, the lock, one-line errors, exit
codes, SLURM's requeue) and the command line of train.py and eval.py (life/cli.py). Imports everything
below it; nothing imports it but train.py and eval.py."""
