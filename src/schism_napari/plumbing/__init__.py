"""Plumbing every layer uses: atomic and claimed outputs, input checks, output folders, weight
files, devices, threads and memory, and the zarr/torchvision compatibility shims."""
