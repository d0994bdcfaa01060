"""TensorBoard: the run's event file (writer.py) and what the template draws into it (dashboards.py,
pictures.py). Imports system/ only; tasks/ draw their pictures with it."""
