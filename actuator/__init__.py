"""The actuator: the only writer of IPVS (Alertmanager webhook, admin API, ledger, safety)."""
