"""lvsguard: observe and steer an LVS (IPVS) load-balancing cluster.

This package is the shared core: the model of the kernel's IPVS table, kernel
access (netlink, procfs), configuration, the one error tree, logging, the desired
table (``lvsguard.table``), the agent for real servers and the command line. It
imports neither application (``exporter``, ``actuator``) when it is imported.
"""

__version__ = "0.1.0"
