"""From a config to the parts of a run, built once: the one schema (config.py), the trust rules for stored
configs (trust.py), the model, data, loaders, task and optimizer (parts.py), the device and the process
group. Imports models/, data/, tasks/, optim/, board/ and system/; never the loop or the run's files."""
