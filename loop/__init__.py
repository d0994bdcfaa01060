"""What train.py's loop calls: its typed state, the session around the epochs, evaluation, the non-finite
skip, early stopping, the time budget, the profiler and progress. Imports store/, setup/, board/, system/."""
