"""Data-parallel pieces that need no second process: launch variables, the GPU check, the
merge of running statistics, the shared run folder. (Two real processes: test_distributed.py.)"""

from __future__ import annotations

import os

import pytest
import torch


# -- bad input (the one-line cases are in tests/test_errors.py, with the catalogue's) -------
def test_more_processes_on_a_machine_than_gpus_is_refused(monkeypatch):
    from metarun.compose import compose_config
    from metarun.distributed import world
    from metarun.errors import MetarunError

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(world.dist, "is_nccl_available", lambda: True)
    cfg = compose_config(["device=cuda", "task.meta_batch=8"])
    with pytest.raises(MetarunError, match="^4 processes on this machine need 4 GPUs but 2 are"):
        world.init_world(cfg)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_running_statistics_merge_into_the_one_process_sequence(momentum):
    """Rank 0 updates a batch norm's running statistics with its tasks, rank 1 with its own,
    from the same start; merged, they are what one process updating with all, in rank order,
    holds (MAML++'s per-step statistics go the same way, row by row)."""
    from torch import nn

    from metarun.distributed.sync import RunningStats, _stats

    torch.manual_seed(0)
    batches = [torch.randn(6, 3, 4, 4, dtype=torch.float64) * (i + 1) + i for i in range(5)]
    one, start = (nn.BatchNorm2d(3, momentum=momentum).double() for _ in range(2))
    for _ in range(2):  # some history before the step
        start(torch.randn(6, 3, 4, 4, dtype=torch.float64))
    one.load_state_dict(start.state_dict())
    for b in batches:
        one(b)
    ranks = []
    for share in (batches[:2], batches[2:]):  # unequal numbers of updates
        r = nn.BatchNorm2d(3, momentum=momentum).double()
        r.load_state_dict(start.state_dict())
        for b in share:
            r(b)
        averages, count = _stats(r)
        ranks.append(torch.cat([t.reshape(-1).double() for t in (*averages, count)]))
    merged = nn.BatchNorm2d(3, momentum=momentum).double()
    merged.load_state_dict({k: v.clone() for k, v in {**start.state_dict()}.items()})
    snapshot = tuple(t.clone() for t in (*_stats(start)[0], _stats(start)[1]))
    RunningStats._merge_one(merged, snapshot, ranks)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(
            merged.state_dict()[key].double(), one.state_dict()[key].double(), rtol=0, atol=1e-12
        ), key


def test_a_slurm_task_of_a_submitit_job_gets_the_rendezvous_variables(monkeypatch):
    """hydra/launcher=slurm with nodes=2, tasks_per_node=2: task 3 (second node, second task)
    reads its rank and the rendezvous host from SLURM through submitit's own helper."""
    from metarun.distributed import world

    exported = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
    for key in (*exported, "MASTER_PORT"):  # recorded, so that the export is undone after
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    slurm = dict(
        SUBMITIT_EXECUTOR="slurm",
        SLURM_JOB_ID="4242",
        SLURM_NTASKS="4",
        SLURM_PROCID="3",
        SLURM_LOCALID="1",
        SLURM_NODEID="1",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="gpu[07-08]",
    )
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert world.launched_size() == 4
    env = os.environ
    assert (env["RANK"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "1", "2")
    assert env["MASTER_ADDR"] == "gpu07" and 20000 <= int(env["MASTER_PORT"]) <= 60000


def test_other_ranks_use_rank_0s_folder_and_remove_the_one_hydra_made_them(tmp_path):
    """Hydra's time-stamped folder differs by a second between processes started a moment
    apart: a rank other than 0 takes rank 0's folder and removes its own if Hydra left it empty
    (never a folder that holds anything)."""
    from omegaconf import OmegaConf

    from metarun.distributed.launch import claim_shared
    from metarun.distributed.world import World
    from metarun.errors import MetarunError

    class Told(World):  # rank 1, told by "rank 0" what it claimed
        def broadcast(self, obj):
            return self.told

    cfg = OmegaConf.create({"resume": False, "resume_dir": None})
    rank0_dir = tmp_path / "14-00-00"
    rank0_dir.mkdir()
    for own, kept in ((tmp_path / "14-00-01", False), (rank0_dir, True)):
        own.mkdir(exist_ok=True)
        world = Told(rank=1, size=2)
        object.__setattr__(world, "told", (str(rank0_dir), False, None))
        folder = claim_shared(world, cfg, own)
        assert folder.run_dir == rank0_dir and not folder.resuming and folder.fd is None
        assert own.exists() == kept
    busy = tmp_path / "14-00-02"
    (busy / "notes").mkdir(parents=True)
    claim_shared(world, cfg, busy)
    assert (busy / "notes").is_dir()  # not empty: left alone
    object.__setattr__(world, "told", (None, False, "no checkpoint at /x/last.pt; check it"))
    with pytest.raises(MetarunError, match=r"^rank 1: stopped with rank 0 \(no checkpoint at"):
        claim_shared(world, cfg, busy)
