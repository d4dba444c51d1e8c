"""Scheduling for the control plane: where instances run.

`model` holds the values (nodes, pods, taints, decisions), `eligibility` the
load-independent filter verdicts, `spread` the topology-spread counts, `placement` the
scheduler itself. Import from `control.scheduler`.
"""
