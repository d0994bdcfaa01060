"""Optimizers and learning-rate schedules beside their configs (conf/optimizer, conf/scheduler, the
`param_groups` node of conf/train.yaml): which parameters get which options (params.py) and the schedules
(schedulers.py). Plain PyTorch, like models/, data/ and tasks/: nothing of the template is imported here."""
