"""The cluster store: state shared by every director (``cluster.store: etcd``; docs/cluster.md).

- ``etcd``: the etcd v3 client (its JSON gateway over the standard library);
- ``records``: the cluster records (holds) as keys and JSON values under the prefix;
- ``fleet``: every director's announced status;
- ``drains``: the cluster-wide drain jobs and their owner (an etcd lease).
"""
