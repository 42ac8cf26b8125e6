"""The actuator: the only writer of IPVS (Alertmanager webhook, admin API and console, ledger, safety rules, jobs)."""
