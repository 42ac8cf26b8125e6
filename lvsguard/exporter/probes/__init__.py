"""Health checks of real servers (docs/probes.md): one asyncio engine, one module per check type.

``result`` holds the value every check returns (``ProbeResult``) and the
``Checker`` protocol; ``engine`` schedules checks and applies rise/fall;
``metrics`` keeps the per-check series the exporter serves; ``publish`` sends
transitions and weight changes to the actuator (the exporter never writes
IPVS). The check types: tcp, http (and https), udp, icmp, dns, script, agent,
prometheus.
"""
