"""Optimizers and learning-rate schedules that conf/optimizer and conf/scheduler name: plain PyTorch, like
models/, data/ and tasks/; they import nothing of the template."""
