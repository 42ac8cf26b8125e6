"""The IPVS table as lvsguard wants it: the desired table, the plan that reaches it, and its apply.

::

    config ``services`` ──load──► DesiredTable ──plan(kernel table)──► Plan ──apply(writer)──► ApplyResult
    keepalived.conf / ldirectord.cf / ipvsadm-save ──importers──► an lvsguard config (YAML)

Everything here but ``apply`` is pure: no socket, no file (the importers read
the file they are given). The reconciler in the actuator is the one caller of
``apply`` on a live director.
"""
