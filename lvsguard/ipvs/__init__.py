"""Kernel access: the netlink reader/writer and the read-only procfs fallback.

Only this package imports pyroute2 or knows the kernel's wire formats.
"""
