"""Benchmarks of storecomp next to the hardware limit, measured in the same run."""
