"""The reliability suite: SIGKILL churn against an independent ledger, EC2 faults, API fuzzing.

`make test` runs it reduced; `make reliability` (VPCNI_RELIABILITY=full) in full. Figures and
what they mean: docs/reliability.md.
"""
