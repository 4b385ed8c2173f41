"""rlmask: pretrain medical image classifiers with learned masking agents."""

__version__ = "0.1.0"
