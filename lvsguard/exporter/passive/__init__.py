"""Passive detection: the clients' own failed handshakes, read from the director's connection table.

``conntable`` reads ``/proc/net/ip_vs_conn`` within a byte budget per tick and
counts, per virtual service and real server, new connections and handshakes
that failed (``refused``: the connection went to CLOSE without being seen
established; ``timeout``: SYN_RECV for longer than the handshake timeout).
``rule`` judges each real server against its peers in the same service and
keeps the hold-downs; it is pure and has no I/O. ``metrics`` serves the
counters and hold-downs on ``/metrics``; ``runner`` ties them to a thread.
docs/probes.md ("Passive detection") explains what is observable for each
forwarding method and why this source was chosen.
"""
