"""The read-only side of lvsguard: IPVS metrics for Prometheus (and, later, SNMP and probes)."""
