"""The optimizer's code beside its configs (conf/optimizer/): which parameters get which options."""
