"""Moved to :mod:`camlens.bench.wsol_digits`; this module keeps the old import path working."""

from camlens.bench.wsol_digits import METHODS, NETS, DigitsWSOL, make_dataset, run, write_dataset

__all__ = ["METHODS", "NETS", "DigitsWSOL", "make_dataset", "run", "write_dataset"]
