"""The runtime: the training core (this folder), the kernels wing below it (`kernels/`) and
the studies wing above it (`studies/`); imports run studies -> core -> kernels (README.md).
"""
