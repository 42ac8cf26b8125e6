"""lvsguard: observe and steer an LVS (IPVS) load-balancing cluster.

This package is the shared core: the model of the kernel's IPVS table, kernel
access (netlink, procfs), configuration and the command line.
"""

__version__ = "0.1.0"
