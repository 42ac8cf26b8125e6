"""The lvsguard lab: a real IPVS kernel and a cluster in network namespaces.

``lab/vm.sh`` boots a throw-away User-Mode Linux kernel that has IPVS;
``lab.topology`` builds a director, real servers and a client inside it, with
NAT, DR, fwmark, IPv6 and UDP services carrying real traffic (``lab.traffic``);
``lab.bigtable`` fills a namespace with a large table for scale tests and
benchmarks. docs/lab.md draws the topology.
"""
