"""Model constructors. Each is a plain function or nn.Module class that a conf/model/*.yaml instantiates."""
