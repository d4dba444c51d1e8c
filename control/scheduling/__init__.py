"""Scheduling for the control plane: where instances run and how many.

`model` holds the values (nodes, pods, taints, decisions), `eligibility` the
load-independent filter verdicts, `spread` the topology-spread counts, `placement` the
scheduler itself. Import from `control.scheduler`.
"""
