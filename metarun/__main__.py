"""``python -m metarun``: the ``metarun`` command (``torchrun --nproc_per_node=N -m metarun``)."""

from metarun.cli import main

main()
