"""metarun's performance benchmark: MAML against `higher`, ProtoNet's step overhead, sampling.

Usage:
  pip install -e '.[bench]'              # installs higher, the reference
  python scripts/bench.py                # every configuration (about 15 minutes on 2 CPU cores)
  python scripts/bench.py --quick        # Omniglot 5-way 1-shot only, fewer repeats (< 2 min)
  python scripts/bench.py --json bench.json --device cuda

MAML rows: one meta-update (adapt every task of a pre-built meta-batch, backpropagate the
meta-loss, optimizer step) of Conv4 with transductive batch norm, for `higher` (the per-task
loop of its README and of learn2learn: `innerloop_ctx` per task, each task backpropagated at once)
and for metarun's `MAML` (its default path, `task_batching=auto`), the two in alternation in this
process, `--repeats` timed steps each after a warm-up; tasks/s is the meta-batch over the median
step time. Both start from the same weights and see the same batch. Peak memory is measured
apart, one fresh process per row (`--probe`): after one untimed step (for `metarun-compiled`,
its compiling step), the peak resident memory during two steps minus the resident memory before
them, i.e. what the step itself needs (on CUDA: the peak allocated).

ProtoNet row: metarun's whole training step (`Trainer.train_step`: sampling, model, loss, optimizer,
metric bookkeeping, a log line every `train.log_every` steps) against a bare
forward/backward/step of the same backbone and loss on a pre-built batch.

Sampling rows: time to sample one training batch as a share of the algorithm's training step.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metarun import compiling
from metarun.algorithms import MAML
from metarun.backbones import Conv4
from metarun.data import TaskBatch


@dataclass(frozen=True)
class MamlCase:
    way: int
    shot: int
    query: int
    meta_batch: int
    inner_steps: int
    inner_lr: float
    channels: int = 1
    size: int = 28
    hidden: int = 64

    def describe(self) -> str:
        return (
            f"conv4-{self.hidden} {self.channels}x{self.size}x{self.size}, {self.way}-way "
            f"{self.shot}-shot {self.query}-query, meta-batch {self.meta_batch}, "
            f"{self.inner_steps} inner step(s)"
        )


MAML_CASES = {
    "omniglot-5w1s-q1": MamlCase(5, 1, 1, 32, 1, 0.4),
    "omniglot-5w1s-q15": MamlCase(5, 1, 15, 32, 1, 0.4),
    "omniglot-20w1s": MamlCase(20, 1, 5, 16, 5, 0.1),
    "miniimagenet-5w1s": MamlCase(5, 1, 15, 4, 5, 0.01, channels=3, size=84, hidden=32),
}
QUICK = ("omniglot-5w1s-q1", "omniglot-5w1s-q15")
ORDERS = {"2nd": False, "1st": True}


# -- the reference: higher's per-task loop -----------------------------------------------------
def reference_conv4(case: MamlCase) -> nn.Module:
    """The usual MAML Conv4 (conv, batch norm with batch statistics, ReLU, max-pool) x 4."""
    layers: list[nn.Module] = []
    size = case.size
    for i in range(4):
        layers += [
            nn.Conv2d(case.channels if i == 0 else case.hidden, case.hidden, 3, padding=1),
            nn.BatchNorm2d(case.hidden, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        size //= 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(case.hidden * size * size, case.way))


def higher_step(model, optimizer, batch: TaskBatch, case: MamlCase, first_order: bool) -> None:
    import higher

    inner = torch.optim.SGD(model.parameters(), lr=case.inner_lr)
    optimizer.zero_grad(set_to_none=True)
    tasks = batch.num_tasks
    for sx, sy, qx, qy in zip(*batch):
        with higher.innerloop_ctx(
            model, inner, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fnet, diffopt):
            for _ in range(case.inner_steps):
                diffopt.step(F.cross_entropy(fnet(sx), sy))
            loss = F.cross_entropy(fnet(qx), qy) / tasks
            if first_order:  # higher's first order: the query gradient at the adapted weights
                grads = torch.autograd.grad(loss, list(fnet.parameters()))
                for p, g in zip(model.parameters(), grads):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                loss.backward()
    optimizer.step()


# -- metarun -------------------------------------------------------------------------------
def metarun_learner(case: MamlCase, first_order: bool, batching: str) -> MAML:
    net = Conv4((case.channels, case.size, case.size), case.way, hidden=case.hidden)
    return MAML(
        net,
        functools.partial(torch.optim.Adam, lr=1e-3),
        inner_lr=case.inner_lr,
        inner_steps=case.inner_steps,
        first_order=first_order,
        task_batching=batching,
    )


def metarun_step(learner: MAML, optimizer, batch: TaskBatch) -> None:
    optimizer.zero_grad(set_to_none=True)
    learner.meta_backward(batch)
    optimizer.step()


def random_batch(case: MamlCase, device: torch.device, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    shape = (case.channels, case.size, case.size)
    b, n = case.meta_batch, case.way
    sx = torch.rand(b, n * case.shot, *shape, generator=g)
    qx = torch.rand(b, n * case.query, *shape, generator=g)
    sy = torch.arange(n).repeat_interleave(case.shot).expand(b, -1).contiguous()
    qy = torch.arange(n).repeat_interleave(case.query).expand(b, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy).to(device)


#: ``metarun-compiled`` rows: seconds of the first (compiling) step, by (config, order).
COMPILE_SECONDS: dict[tuple[str, bool], float] = {}


def make_impl(impl: str, case: MamlCase, first_order: bool, device: torch.device):
    """A zero-argument training step for ``impl`` (``higher``, ``metarun[-<batching>]`` or
    ``metarun-compiled``: ``train.compile=true``, the first step timed apart)."""
    batch = random_batch(case, device)
    torch.manual_seed(0)
    compiled = impl == "metarun-compiled"
    batching = "auto" if compiled else impl.partition("-")[2] or "auto"
    learner = metarun_learner(case, first_order, batching).to(device)
    if impl == "higher":
        model = reference_conv4(case).to(device)
        # The same initial weights as metarun's Conv4 (parameter order is the same).
        with torch.no_grad():
            for theirs, ours in zip(model.parameters(), learner.parameters(), strict=True):
                theirs.copy_(ours)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        return functools.partial(higher_step, model, optimizer, batch, case, first_order)
    optimizer, _ = learner.configure_optimizers()
    step = functools.partial(metarun_step, learner, optimizer, batch)
    if compiled:
        compiling.compile_training(learner)
        start = time.perf_counter()
        step()
        sync(device)
        COMPILE_SECONDS[(case.describe(), first_order)] = time.perf_counter() - start
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_alternating(steps: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each step function, timed in alternation after a warm-up."""
    for step in steps.values():
        step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def probe_memory(config: str, order: str, impl: str, device: torch.device) -> float:
    """Peak memory (MB) two steps of one row need, measured in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--probe",
        config,
        order,
        impl,
        "--device",
        str(device),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {config} {order} {impl} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_probe(config: str, order: str, impl: str, device: torch.device) -> None:
    case = MAML_CASES[config]
    step = make_impl(impl, case, ORDERS[order], device)
    if impl != "metarun-compiled":  # every row measured after one step (compiled: its compile)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        step()
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - base) / 2**20)
        return
    # Not getrusage's ru_maxrss: Linux carries it over from the parent across fork and exec.
    # VmHWM belongs to this process's memory map; writing 5 to clear_refs resets it to now.
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_mb("VmRSS")
    step()
    step()
    print(_status_mb("VmHWM") - base)


def bench_maml(names, args, device, records: list[dict]) -> None:
    for name in names:
        case = MAML_CASES[name]
        print(f"\n{name}: {case.describe()}", flush=True)
        for order, first_order in ORDERS.items():
            impls = ["higher", *args.impls]
            steps = {impl: make_impl(impl, case, first_order, device) for impl in impls}
            seconds = time_alternating(steps, args.repeats, device)
            reference = case.meta_batch / seconds["higher"]
            for impl in impls:
                rate = case.meta_batch / seconds[impl]
                memory = None if args.no_memory else probe_memory(name, order, impl, device)
                record = {
                    "config": f"{name}/{order}",
                    "impl": impl,
                    "tasks_per_s": round(rate, 2),
                    "peak_mem_mb": None if memory is None else round(memory, 1),
                }
                if impl != "higher":
                    record["ratio_vs_higher"] = round(rate / reference, 2)
                records.append(record)
                ratio = f"{rate / reference:6.2f}x" if impl != "higher" else " " * 7
                mem = "      -" if memory is None else f"{memory:7.0f}"
                print(f"  {order} order  {impl:<16}{rate:9.1f} tasks/s {mem} MB {ratio}")
                if impl == "metarun-compiled" and "metarun" in seconds:
                    first = COMPILE_SECONDS[(case.describe(), first_order)]
                    saved = seconds["metarun"] - seconds[impl]  # per step, against eager
                    repaid = f"{(first - seconds[impl]) / saved:,.0f}" if saved > 0 else "never"
                    record.update(compile_s=round(first, 1), repaid_after_steps=repaid)
                    print(f"    first step (compiling) {first:.1f} s; repaid after {repaid} "
                          "steps against metarun eager")  # fmt: skip


# -- a bound: the query set's convolutions alone ---------------------------------------------
def convolutions_alone(case: MamlCase, device: torch.device):
    """One meta-batch worth of only the query pass's convolutions (forward, weight gradients,
    input gradients but the first layer's) at the case's shapes: the arithmetic no fp32
    per-task implementation avoids, whatever it does about batch norm, pooling or Python."""
    g = torch.Generator().manual_seed(0)
    n, size, cin = case.way * case.query, case.size, case.channels
    layers = []
    for i in range(4):
        x = torch.rand(n, cin, size, size, generator=g).to(device).requires_grad_(i > 0)
        w = (0.1 * torch.randn(case.hidden, cin, 3, 3, generator=g)).to(device).requires_grad_()
        layers.append((x, w))
        cin, size = case.hidden, size // 2

    def step() -> None:
        for _ in range(case.meta_batch):
            for x, w in layers:
                y = F.conv2d(x, w, padding=1)
                torch.autograd.grad(y, [x, w] if x.requires_grad else [w], torch.ones_like(y))

    return step


def bench_floor(names, args, device, records: list[dict]) -> None:
    print("\nthe query pass's convolutions alone (an upper bound for fp32 per-task speed):")
    for name in names:
        case = MAML_CASES[name]
        steps = {
            "higher": make_impl("higher", case, False, device),
            "convolutions": convolutions_alone(case, device),
        }
        seconds = time_alternating(steps, args.repeats, device)
        bound = seconds["higher"] / seconds["convolutions"]
        rate = case.meta_batch / seconds["convolutions"]
        print(f"  {name:<20} {rate:8.1f} tasks/s = {bound:.2f}x higher's 2nd-order rate")
        records.append(
            {
                "config": f"{name}/2nd",
                "impl": "query-convolutions-alone",
                "tasks_per_s": round(rate, 2),
                "bound_vs_higher": round(bound, 2),
            }
        )


# -- ProtoNet overhead and sampling, through the real config and trainer -------------------
def compose(overrides: list[str]):
    from metarun.compose import compose_config

    return compose_config(overrides)


def trainer_for(overrides: list[str], run_dir: Path):
    """metarun's real experiment and trainer, logging to the local files and the console."""
    from rich.console import Console

    from metarun.experiment import build_experiment
    from metarun.logging.setup import build_logger
    from metarun.trainer import Trainer

    run_dir.mkdir(parents=True)
    cfg = compose([*overrides, "logger=none"])
    exp = build_experiment(cfg, run_dir=run_dir)
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the run
    logger = build_logger(cfg, exp.config, run_dir, console)
    logger.start(10**6)
    trainer = Trainer(exp)
    trainer.logger = logger  # the benchmark drives train_step itself, not fit
    return exp, trainer


def trainer_step(trainer) -> float:
    """Seconds of one ``Trainer.train_step`` (plus the log line when one is due)."""
    start = time.perf_counter()
    trainer.train_step()
    if trainer.step % trainer.cfg.train.log_every == 0:
        trainer.log_train()
    sync(trainer.exp.device)
    return time.perf_counter() - start


GLYPHS = ["dataset=glyphs", "dataset.classes=[120,60,60]", "dataset.samples_per_class=20"]


def bench_protonet(args, device, records: list[dict], run_root: Path) -> None:
    way, query = 60, 5
    overrides = [
        "algo=protonet",
        *GLYPHS,
        f"task.way={way}",
        "task.shot=1",
        f"task.query={query}",
        "task.meta_batch=1",
        f"device={device.type}",
    ]
    exp, trainer = trainer_for(overrides, run_root / "protonet")
    learner, optimizer = exp.learner, exp.optimizer
    batch = exp.dataset.sample("train", 1, exp.train_shape, torch.Generator().manual_seed(0))
    batch = batch.to(device)
    labels = batch.query_y.flatten()

    def bare() -> float:  # the same network and loss on a ready batch, no framework around it
        start = time.perf_counter()
        z = learner.backbone(torch.cat([batch.support_x, batch.query_x], dim=1))[0]
        prototypes = z[:way]  # one shot: the support embeddings are the prototypes, in order
        logits = -(z[way:].unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        sync(device)
        return time.perf_counter() - start

    for _ in range(2):
        bare()
        trainer_step(trainer)
    full_times, bare_times = [], []
    for _ in range(args.repeats * 4):  # alternating, so both see the same machine state
        full_times.append(trainer_step(trainer))
        bare_times.append(bare())
    full, plain = statistics.median(full_times), statistics.median(bare_times)
    overhead = 100 * (full / plain - 1)
    print(
        f"\nprotonet-60w1s5q (conv4-64 28x28, glyphs): full training step {1000 * full:.1f} ms, "
        f"bare forward/backward/step {1000 * plain:.1f} ms: overhead {overhead:+.1f}%"
    )
    records.append(
        {
            "config": "protonet-60w1s5q",
            "impl": "metarun",
            "step_ms": round(1000 * full, 2),
            "bare_step_ms": round(1000 * plain, 2),
            "overhead_pct": round(overhead, 2),
        }
    )


SAMPLING = {
    "maml": ["algo=maml", "task.query=15", "task.meta_batch=32", "algo.inner_lr=0.4"],
    "fomaml": ["algo=fomaml", "task.query=15", "task.meta_batch=32", "algo.inner_lr=0.4"],
    "protonet": ["algo=protonet", "task.way=60", "task.query=5", "task.meta_batch=1"],
    "mann": ["algo=mann"],
}


def bench_sampling(args, device, records: list[dict], run_root: Path) -> None:
    print("\nsampling one training batch, as a share of the training step (glyphs):")
    for algo, overrides in SAMPLING.items():
        run_dir = run_root / f"sampling-{algo}"
        exp, trainer = trainer_for([*GLYPHS, *overrides, f"device={device.type}"], run_dir)
        trainer_step(trainer)  # warm-up
        step = statistics.median(trainer_step(trainer) for _ in range(args.repeats))
        generator = torch.Generator().manual_seed(0)
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            batch = exp.dataset.sample(
                "train", exp.cfg.task.meta_batch, exp.train_shape, generator, device
            )
            if exp.learner.sequential:
                batch = batch.shuffled(generator)
            sync(device)
            samples.append(time.perf_counter() - start)
        sample = statistics.median(samples)
        share = 100 * sample / step
        print(
            f"  {algo:<9} sample {1000 * sample:7.2f} ms, step {1000 * step:8.1f} ms: {share:.2f}%"
        )
        records.append(
            {
                "config": f"sampling/{algo}",
                "impl": "metarun",
                "sample_ms": round(1000 * sample, 3),
                "step_ms": round(1000 * step, 2),
                "share_pct": round(share, 3),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Omniglot 5w1s only, < 2 minutes")
    parser.add_argument("--json", type=Path, help="also write the records to this file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per row")
    parser.add_argument("--configs", nargs="*", choices=sorted(MAML_CASES), help="MAML rows")
    parser.add_argument(
        "--impls",
        nargs="*",
        default=["metarun"],
        help="metarun variants beside higher: metarun (default path), metarun-fold, "
        "metarun-loop, metarun-vmap, metarun-compiled (train.compile=true)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument(
        "--inductor-cache",
        type=Path,
        help="metarun-compiled rows: Inductor's cache folder (default: a new, empty one, so the "
        "first step's time is a cold compile; pass the same folder twice for a warm start)",
    )
    parser.add_argument(
        "--parts",
        nargs="*",
        choices=["maml", "floor", "protonet", "sampling"],
        help="which parts to run (default: all; --quick: maml and protonet)",
    )
    parser.add_argument(
        "--probe", nargs=3, metavar=("CONFIG", "ORDER", "IMPL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.probe:
        run_probe(*args.probe, device)
        return
    try:
        import higher  # noqa: F401
    except ImportError:
        sys.exit("scripts/bench.py needs `higher` as its reference: pip install -e '.[bench]'")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if "metarun-compiled" in args.impls:  # Inductor's cache: where --inductor-cache says
        cache = args.inductor_cache
        if cache is None:
            cache = Path(tempfile.mkdtemp(prefix="metarun-bench-inductor-"))
            atexit.register(shutil.rmtree, cache, ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = compiling._USERS_INDUCTOR_CACHE = str(cache)
        state = "warm" if any(Path(cache).glob("*")) else "cold"
        print(f"metarun-compiled: Inductor cache {cache} ({state} at the start)")
    names = args.configs or (QUICK if args.quick else list(MAML_CASES))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"torch {torch.__version__}, {device} ({name or platform.machine()}), "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"medians of {args.repeats} steps"
    )
    everything = ["maml", "floor", "protonet", "sampling"]
    parts = args.parts or (["maml", "protonet"] if args.quick else everything)
    records: list[dict] = []
    if "maml" in parts:
        bench_maml(names, args, device, records)
    if "floor" in parts:
        bench_floor(names, args, device, records)
    with tempfile.TemporaryDirectory() as tmp:
        if "protonet" in parts:
            bench_protonet(args, device, records, Path(tmp))
        if "sampling" in parts:
            bench_sampling(args, device, records, Path(tmp))
    if args.json:
        meta = {
            "torch": torch.__version__,
            "device": str(device),
            "threads": torch.get_num_threads(),
        }
        args.json.write_text(json.dumps([{**r, **meta} for r in records], indent=1) + "\n")
        print(f"\nwrote {len(records)} records to {args.json}")


if __name__ == "__main__":
    main()
