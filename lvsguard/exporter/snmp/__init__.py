"""The exporter's SNMP side: LVSGUARD-MIB (``mibs/``) and the agent that serves it.

``agent.SnmpAgent`` answers v2c from a pre-encoded OID index (``mibview``,
``fastpath``) and v3 through pysnmp (``v3``); both read one snapshot of the
same data model as ``/metrics`` (``snapshot``, ``layout``).
"""
