"""The read-only side of lvsguard: the IPVS table as Prometheus metrics and SNMP, and the health checks.

It never writes IPVS: a probe transition is posted to the actuator (``probes.publish``).
"""
