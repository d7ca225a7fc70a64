"""The sans-IO IPAM core: state, allocation, the warm-pool planner, max pods, checkpoints.

Nothing here does I/O or reads the clock: `now` is always an argument. This package imports
nothing else of the project.
"""
