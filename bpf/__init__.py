"""Not Python code: this makes the eBPF C sources (bcc dialect) installable package data.

`redirect/loader.py` reads `*.c` and `include/*.h` from this directory, so a wheel or a
container image built without an editable install still carries the datapath.
"""
