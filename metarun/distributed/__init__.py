"""Data-parallel runs: one run's meta-batch across processes (``torchrun``, SLURM)."""

from metarun.distributed.world import SINGLE, World, device_of, init_world

__all__ = ["SINGLE", "World", "device_of", "init_world"]
