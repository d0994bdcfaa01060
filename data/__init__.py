"""Dataset constructors. Each returns a `Splits` (train/val/test datasets) that a conf/data/*.yaml instantiates."""
