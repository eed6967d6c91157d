"""MANN: the LRUA memory's update rules, per-presentation metrics, sequences, learning."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from metarun import report
from metarun.algorithms import MANN
from metarun.algorithms.lrua import LRUAMemory, MemoryState, least_used
from metarun.algorithms.mann import presentation_numbers
from metarun.algorithms.memory_use import record_steps
from metarun.backbones import MLP
from metarun.data.batch import TaskBatch, TaskShape
from metarun.data.episodes import EpisodicImages
from metarun.errors import MetarunError
from tests.conftest import GLYPHS_SMALL, read_jsonl
from tests.wandb_records import run_summary

BIG = 30.0  # a gate logit this large is a hard 0/1 choice in float64


def _memory(slots=4, width=3, heads=1, gamma=0.5, controller=2) -> LRUAMemory:
    return LRUAMemory(controller, slots, width, heads, gamma).double()


def _set_outputs(mem: LRUAMemory, key, gate) -> None:
    """Make the heads emit fixed keys ``[H, W]`` and gate logits ``[H]``."""
    with torch.no_grad():
        mem.key.weight.zero_()
        mem.key.bias.copy_(torch.atanh(torch.as_tensor(key, dtype=torch.float64)).flatten())
        mem.gate.weight.zero_()
        mem.gate.bias.copy_(torch.as_tensor(gate, dtype=torch.float64))


def _state(memory, usage, read_weights, heads=1) -> MemoryState:
    memory = torch.as_tensor(memory, dtype=torch.float64)[None]
    usage = torch.as_tensor(usage, dtype=torch.float64)[None]
    read = torch.as_tensor(read_weights, dtype=torch.float64).view(1, heads, -1)
    reads = torch.zeros(1, heads, memory.shape[-1], dtype=torch.float64)
    return MemoryState(memory, usage, read, least_used(usage, heads), reads)


MEM0 = [[0.5, 0.1, -0.2], [0.3, 0.3, 0.3], [-0.4, 0.2, 0.6], [0.9, -0.1, 0.0]]
USAGE0 = [0.9, 0.2, 0.7, 0.5]  # slot 1 is least used, then slot 3


def test_least_used_marks_the_heads_smallest_usages_in_order():
    usage = torch.tensor([[0.9, 0.2, 0.7, 0.2, 0.1]])
    lu = least_used(usage, 3)
    # Head 0 takes the least used slot (4), head 1 the next (1, first of the tie), head 2 slot 3.
    assert lu.argmax(-1).tolist() == [[4, 1, 3]]
    assert torch.equal(lu.sum(-1), torch.ones(1, 3))


def test_closed_gate_writes_to_the_least_used_slot_after_zeroing_it():
    mem = _memory()
    key = [[0.2, -0.5, 0.4]]
    _set_outputs(mem, key, gate=[-BIG])  # sigmoid(gate) = 0: least-used slot
    state = _state(MEM0, USAGE0, [0.0, 0.0, 1.0, 0.0])
    _, new = mem.step(torch.zeros(1, 2, dtype=torch.float64), state)
    expected = torch.tensor(MEM0, dtype=torch.float64)
    expected[1] = torch.tensor(key[0], dtype=torch.float64)  # slot 1 zeroed, then written
    torch.testing.assert_close(new.memory[0], expected)


def test_open_gate_writes_to_the_previously_read_slots_and_still_clears_the_least_used():
    mem = _memory()
    key = [[0.2, -0.5, 0.4]]
    _set_outputs(mem, key, gate=[BIG])  # sigmoid(gate) = 1: where the head read last step
    previous_read = [0.0, 0.0, 0.75, 0.25]
    state = _state(MEM0, USAGE0, previous_read)
    _, new = mem.step(torch.zeros(1, 2, dtype=torch.float64), state)
    m0, v = torch.tensor(MEM0, dtype=torch.float64), torch.tensor(key[0], dtype=torch.float64)
    expected = m0.clone()
    expected[1] = 0.0  # the least used slot is cleared whatever the gate says
    expected[2] = m0[2] + 0.75 * v
    expected[3] = m0[3] + 0.25 * v
    torch.testing.assert_close(new.memory[0], expected)


def test_half_open_gate_interpolates_the_two_write_targets():
    mem = _memory()
    _set_outputs(mem, [[0.2, -0.5, 0.4]], gate=[0.0])
    state = _state(MEM0, USAGE0, [0.0, 0.0, 1.0, 0.0])
    write = mem.write_weights(mem.gate(torch.zeros(1, 2, dtype=torch.float64)), state)
    torch.testing.assert_close(write[0, 0], torch.tensor([0.0, 0.5, 0.5, 0.0]).double())


def test_reads_are_a_softmax_of_cosines_over_the_written_memory():
    mem = _memory(gamma=0.5)
    key = [[0.2, -0.5, 0.4]]
    _set_outputs(mem, key, gate=[-BIG])
    state = _state(MEM0, USAGE0, [0.0, 0.0, 1.0, 0.0])
    reads, new = mem.step(torch.zeros(1, 2, dtype=torch.float64), state)
    k = torch.tensor(key[0], dtype=torch.float64)
    m1 = torch.tensor(MEM0, dtype=torch.float64)
    m1[1] = k  # this step's write: the key into the least-used slot
    cos = torch.stack([torch.dot(k, row) / (k.norm() * row.norm()) for row in m1])
    weights = torch.exp(cos) / torch.exp(cos).sum()
    torch.testing.assert_close(new.read_weights[0, 0], weights)
    assert math.isclose(new.read_weights.sum().item(), 1.0)
    assert new.read_weights[0, 0].argmax().item() == 1  # the key finds the slot it just wrote
    # The read vector is that convex combination of the memory's rows.
    torch.testing.assert_close(reads[0, 0], weights @ m1)
    # Usage decays by gamma and adds this step's read and write weights.
    write = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    usage = 0.5 * torch.tensor(USAGE0, dtype=torch.float64) + weights + write
    torch.testing.assert_close(new.usage[0], usage)
    assert new.least_used[0, 0].argmax().item() == int(usage.argmin())


def test_each_head_writes_its_own_least_used_slot():
    mem = _memory(heads=2)
    values = [[0.6, -0.3, 0.1], [-0.2, 0.4, 0.5]]
    _set_outputs(mem, values, gate=[-BIG, -BIG])
    state = _state(MEM0, USAGE0, [0.0] * 8, heads=2)
    _, new = mem.step(torch.zeros(1, 2, dtype=torch.float64), state)
    torch.testing.assert_close(new.memory[0, 1], torch.tensor(values[0]).double())
    torch.testing.assert_close(new.memory[0, 3], torch.tensor(values[1]).double())
    torch.testing.assert_close(new.memory[0, [0, 2]], torch.tensor(MEM0).double()[[0, 2]])


def test_gradients_reach_the_controller_through_writes_and_reads():
    torch.manual_seed(0)
    mem = _memory(slots=6, width=3, heads=2, controller=5)
    state = mem.initial_state(2, "cpu", torch.float64)
    h1 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    _, state = mem.step(h1, state)
    reads, _ = mem.step(h2, state)
    g1, g2 = torch.autograd.grad(reads.pow(2).sum(), [h1, h2])
    # h1 only reaches step 2's reads through what it wrote into the memory.
    assert g1.abs().sum() > 1e-6
    assert g2.abs().sum() > 1e-6


def test_the_loss_trains_every_part_of_the_model():
    torch.manual_seed(0)
    model = _mann()
    loss, _ = model.meta_loss(_sequence(b=2, shot=3))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_presentation_numbers_count_each_class_in_order():
    y = torch.tensor([[2, 0, 2, 1, 0, 2]])
    assert presentation_numbers(y, 3).tolist() == [[1, 1, 2, 1, 2, 3]]


def _mann(way=3, memory="lrua", **kw) -> MANN:
    backbone = MLP((1, 2, 2), None, hidden=[])
    optimizer = functools.partial(torch.optim.Adam, lr=1e-3)
    defaults = dict(controller_size=8, memory_slots=6, memory_width=4, read_heads=2)
    return MANN(backbone, optimizer, way=way, memory=memory, **{**defaults, **kw})


def _sequence(b=2, way=3, shot=2, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, way * shot, 1, 2, 2, generator=g)
    y = torch.stack([torch.randperm(way * shot, generator=g) % way for _ in range(b)])
    empty_x, empty_y = x[:, :0], y[:, :0]
    return TaskBatch(x, y, empty_x, empty_y)


@pytest.mark.parametrize("memory", ["lrua", "none"])
def test_episodes_are_independent_and_state_resets(memory):
    torch.manual_seed(0)
    model = _mann(memory=memory).eval()
    a, b = _sequence(b=1, seed=1), _sequence(b=1, seed=2)
    alone, _ = model.sequence_logits(a.support_x, a.support_y)
    model.sequence_logits(b.support_x, b.support_y)  # another episode first: nothing carries over
    again, _ = model.sequence_logits(a.support_x, a.support_y)
    both, _ = model.sequence_logits(
        torch.cat([b.support_x, a.support_x]), torch.cat([b.support_y, a.support_y])
    )
    torch.testing.assert_close(alone, again)
    torch.testing.assert_close(both[1:], alone)


def _reference_logits(model: MANN, x, y):
    """The model written the plain way: ``nn.LSTMCell`` and the output layer step by step."""
    b, steps = y.shape
    z = model.backbone(x)
    hx = cx = z.new_zeros(b, model.controller.hidden_size)
    memory = model.memory.initial_state(b, z.device, z.dtype) if model.memory else None
    last = z.new_zeros(b, model.way)
    logits = []
    for t in range(steps):
        inputs = [z[:, t], last] + ([memory.reads.flatten(1)] if memory is not None else [])
        hx, cx = model.controller(torch.cat(inputs, dim=-1), (hx, cx))
        if memory is not None:
            reads, memory = model.memory.step(hx, memory)
            logits.append(model.output(torch.cat([hx, reads.flatten(1)], dim=-1)))
        else:
            logits.append(model.output(hx))
        last = F.one_hot(y[:, t], model.way).to(z.dtype)
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("memory", ["lrua", "none"])
def test_the_rearranged_controller_is_the_lstm_cell_step_by_step(memory):
    """sequence_logits projects the image and label inputs of all steps at once: same logits and
    the same gradient for every parameter as nn.LSTMCell applied step by step (float64)."""
    torch.manual_seed(0)
    model = _mann(memory=memory).double()
    batch = _sequence(b=3, shot=4)
    x, y = batch.support_x.double(), batch.support_y
    ours, (_, _, last) = model.sequence_logits(x, y)
    reference = _reference_logits(model, x, y)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(last, F.one_hot(y[:, -1], 3).double())
    params = [p for p in model.parameters()]
    weights = torch.randn_like(ours)
    got = torch.autograd.grad((ours * weights).sum(), params)
    want = torch.autograd.grad((reference * weights).sum(), params)
    for (name, _), g, w in zip(model.named_parameters(), got, want, strict=True):
        torch.testing.assert_close(g, w, msg=name)
        assert g.abs().sum() > 0, name


def test_step_t_sees_the_previous_label_not_its_own():
    torch.manual_seed(0)
    model = _mann().eval()
    batch = _sequence(b=1)
    logits, _ = model.sequence_logits(batch.support_x, batch.support_y)
    y = batch.support_y.clone()
    y[0, 3] = (y[0, 3] + 1) % 3  # change the label of step 3: steps 0-3 must not move
    changed, _ = model.sequence_logits(batch.support_x, y)
    torch.testing.assert_close(changed[:, :4], logits[:, :4])
    assert not torch.allclose(changed[:, 4], logits[:, 4])


def test_per_presentation_accuracy_matches_a_hand_count(monkeypatch):
    model = _mann(report_instances=[1, 2, 3])
    batch = _sequence(b=2, shot=3)
    numbers = presentation_numbers(batch.support_y, 3)
    # A model right on every presentation but the first of each class.
    right = F.one_hot(batch.support_y, 3).float() * 10
    wrong = F.one_hot((batch.support_y + 1) % 3, 3).float() * 10
    logits = torch.where((numbers == 1).unsqueeze(-1), wrong, right)
    monkeypatch.setattr(model, "sequence_logits", lambda x, y, state=None: (logits, None))
    scores = model.evaluate(batch)
    assert scores["acc_inst1"].tolist() == [0.0, 0.0]
    assert scores["acc_inst2"].tolist() == [1.0, 1.0]
    assert scores["acc_inst3"].tolist() == [1.0, 1.0]
    torch.testing.assert_close(scores["acc"], torch.full((2,), 2 / 3))


def test_predict_classifies_queries_after_the_support_sequence():
    torch.manual_seed(0)
    model = _mann().eval()
    batch = _sequence(b=1)
    queries = torch.rand(4, 1, 2, 2)
    logits = model.predict(batch.support_x[0], batch.support_y[0], queries)
    assert logits.shape == (4, 3)
    # Each query is its own continuation: the same as appending it to the (shuffled) sequence.
    order = torch.rand(6, generator=torch.Generator().manual_seed(0)).argsort()
    seq_x = torch.cat([batch.support_x[:, order], queries[1:2][None]], dim=1)
    seq_y = torch.cat([batch.support_y[:, order], torch.zeros(1, 1, dtype=torch.long)], dim=1)
    full, _ = model.sequence_logits(seq_x, seq_y)
    torch.testing.assert_close(logits[1], full[0, -1])


def test_bad_sizes_and_shapes_are_one_line_errors():
    with pytest.raises(MetarunError, match="read_heads=7 exceeds algo.memory_slots=6"):
        _mann(read_heads=7)
    with pytest.raises(MetarunError, match="algo.memory='ntm' is unknown"):
        _mann(memory="ntm")
    with pytest.raises(MetarunError, match="task.query=15"):
        MANN.check_task(TaskShape(5, 10, 15), "meta-training", OmegaConf.create({"way": 5}))
    with pytest.raises(MetarunError, match="5-way output layer"):
        MANN.check_task(TaskShape(20, 10, 0), "meta-training", OmegaConf.create({"way": 5}))
    four = _sequence(b=1, way=4)  # more classes than outputs: refused where users pass them
    with pytest.raises(MetarunError, match="the episode has 4 classes; use at most 3"):
        _mann(way=3).predict(four.support_x[0], four.support_y[0], four.support_x[0, :2])


def _binding_task():
    """Classes are fixed random 4x4 patterns (little noise): easy to encode, impossible to
    classify without binding, since labels are re-drawn in every episode."""
    g = torch.Generator().manual_seed(0)

    def split(classes):
        proto = torch.rand(classes, 1, 1, 4, 4, generator=g)
        noise = torch.rand(classes, 8, 1, 4, 4, generator=g)
        return ((0.9 * proto + 0.1 * noise) * 255).to(torch.uint8)

    return EpisodicImages({"train": split(300), "val": split(10), "test": split(100)})


@pytest.mark.parametrize("memory", ["lrua"])
def test_mann_learns_to_bind_labels_within_an_episode(memory):
    torch.manual_seed(0)
    data, shape = _binding_task(), TaskShape(3, 3, 0)
    model = MANN(
        MLP(data.input_shape, None, hidden=[]),
        functools.partial(torch.optim.Adam, lr=1e-2),
        way=3,
        memory=memory,
        controller_size=64,
        memory_slots=16,
        memory_width=16,
        read_heads=1,
        report_instances=[1, 2],
    )
    optimizer, _ = model.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        loss, _ = model.meta_loss(data.sample("train", 32, shape, g).shuffled(g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = data.sample("test", 300, shape, torch.Generator().manual_seed(1))
    scores = model.evaluate(test.shuffled(torch.Generator().manual_seed(2)))
    first, second = scores["acc_inst1"].mean().item(), scores["acc_inst2"].mean().item()
    # First showing: chance, or at best "a label not seen yet" (1/3, 1/2, 1: mean 0.61).
    assert first < 0.65, first
    assert second > 0.75, (first, second)


STEPS = 2000


MANN_TINY = [
    "dataset=glyphs",
    *GLYPHS_SMALL,
    "train.steps=6",
    "train.log_every=3",
    "val.every=3",
    "val.episodes=4",
    "test.episodes=6",
    "test.batch_size=4",
    "algo.controller_size=16",
    "algo.memory_slots=8",
    "algo.memory_width=4",
]


ALGOS = ("mann", "lstm")


@pytest.mark.parametrize("algo", ALGOS)
def test_a_mann_run_reports_per_presentation_accuracy_everywhere(run_inprocess, algo):
    run_dir, _ = run_inprocess([f"algo={algo}", *MANN_TINY, "logger.mode=offline"])
    summary = json.loads((run_dir / "summary.json").read_text())
    keys = [f"test/acc_inst{i}" for i in (1, 2, 3, 4, 5, 10)]
    for key in ["test/acc", *keys]:
        assert 0.0 <= summary[key] <= 1.0 and summary[f"{key}_ci95"] >= 0, key
    assert summary["best_val/acc"] is not None and summary["train/tasks_per_s"] > 0
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert any("train/acc_inst2" in row for row in rows)
    assert any("val/acc_inst10" in row for row in rows)
    # W&B gets the accuracy-by-presentation table, in presentation order.
    (table_file,) = run_dir.glob("wandb/offline-run-*/files/media/table/test/acc_by_instance_*")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["instance", "acc", "acc_ci95"]
    assert [row[0] for row in table["data"]] == [1, 2, 3, 4, 5, 10]
    assert table["data"][1][1] == pytest.approx(summary["test/acc_inst2"])
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert run_summary(log)["test/acc_inst2"] == pytest.approx(summary["test/acc_inst2"])


def test_the_memory_use_script_reports_each_presentation(run_inprocess, capsys, monkeypatch):
    import runpy
    import sys

    run_dir, _ = run_inprocess(["algo=mann", *MANN_TINY, "logger=none"])
    summary = json.loads((run_dir / "summary.json").read_text())
    script = Path(__file__).parents[1] / "scripts" / "mann_memory_use.py"
    # The run's own test episodes (test.seed, .episodes, .batch_size): the accuracies agree.
    best = str(run_dir / "checkpoints" / "best.pt")
    args = ["--episodes", "6", "--seed", "2002", "--batch-size", "4"]
    monkeypatch.setattr(sys, "argv", [str(script), best, *args])
    runpy.run_path(str(script), run_name="__main__")  # a thin CLI over memory_use
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.split()[:2] == ["inst", "entropy"]))
    rows = [line.split() for line in lines[header + 1 :]]
    assert [int(r[0]) for r in rows] == list(range(1, 11))  # 10 presentations per class
    for inst, entropy, max_w, self_w, same, late, gate, acc, *ablated in rows:
        assert len(ablated) == 3 and all(0.0 <= float(a) <= 1.0 for a in ablated)
        assert 0.0 <= float(entropy) <= math.log(8) + 1e-4  # 8 slots
        assert 1 / 8 - 1e-4 <= float(max_w) <= 1.0 and 0.0 <= float(gate) <= 1.0
        assert 0.0 <= float(self_w) <= float(max_w)
        assert (same == "-") == (inst == "1")  # nothing of the class was written before
        assert (late == "-") == (inst == "1")
        if inst in {"1", "2", "10"}:  # the intact pass, after the ablated ones: nothing leaked
            assert float(acc) == pytest.approx(summary[f"test/acc_inst{inst}"], abs=1e-3)
    # What each ablation hands the controller in place of the reads.
    memory = LRUAMemory(2, slots=4, width=3, heads=2).double()
    h = torch.randn(3, 2, dtype=torch.float64)
    state = memory.initial_state(3, "cpu", torch.float64)._replace(
        memory=torch.randn(3, 4, 3, dtype=torch.float64)
    )
    reads, new = memory.step(h, state)
    ablation = ["none"]
    record_steps(memory, ablation)
    expected = {
        "none": reads,
        "uniform": new.memory.mean(1, keepdim=True).expand(-1, 2, -1),
        "zero": torch.zeros_like(reads),
        "swap": reads[[2, 0, 1]],  # episode b gets episode b - 1's reads
    }
    for ablation[0], want in expected.items():
        got, got_state = memory.step(h, state)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_state.reads, want)  # the next step's input too
        torch.testing.assert_close(got_state.memory, new.memory)  # the memory itself untouched


def test_the_paired_script_compares_two_models_on_the_same_episodes(
    run_inprocess, capsys, monkeypatch
):
    import runpy
    import sys

    runs = {a: run_inprocess([f"algo={a}", *MANN_TINY, "logger=none"], a)[0] for a in ALGOS}
    other_data = ["algo=lstm", *MANN_TINY, "logger=none", "dataset.seed=1"]
    runs["other"] = run_inprocess(other_data, "other")[0]
    script = Path(__file__).parents[1] / "scripts" / "mann_paired.py"

    def paired(a: str, b: str) -> list[list[str]]:
        best = [str(runs[r] / "checkpoints" / "best.pt") for r in (a, b)]
        own_test = ["--episodes", "6", "--seed", "2002", "--batch-size", "4"]
        monkeypatch.setattr(sys, "argv", [str(script), *best, *own_test])
        runpy.run_path(str(script), run_name="__main__")
        lines = capsys.readouterr().out.splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["A", "B"])
        return [line.split() for line in lines[header + 1 :]]

    rows = paired("mann", "lstm")
    assert [r[1] for r in rows[:-1]] == ["1", "2", "3", "4", "5", "10"] and rows[-1][0] == "all"
    summaries = {a: json.loads((runs[a] / "summary.json").read_text()) for a in ALGOS}
    for row in rows:
        key = "test/acc" if row[0] == "all" else f"test/acc_inst{row[1]}"
        a, b, diff = (float(v) for v in row[-4:-1])
        assert a == pytest.approx(100 * summaries["mann"][key], abs=0.051)  # the runs' own tables
        assert b == pytest.approx(100 * summaries["lstm"][key], abs=0.051)
        assert diff == pytest.approx(a - b, abs=0.11)
    with pytest.raises(MetarunError, match="draw different test episodes"):
        paired("lstm", "other")


def _without_hydra(cfg):
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_mann_evaluation_episodes_are_fixed_and_shuffled(compose_cfg):
    from metarun.experiment import build_experiment

    cfg = _without_hydra(compose_cfg(["algo=mann", *MANN_TINY]))
    exp = build_experiment(cfg, run_dir=Path("unused"))
    first, again = next(exp.episodes("test")), next(exp.episodes("test"))
    assert torch.equal(first.support_x, again.support_x)  # the same episodes every time
    y = first.support_y
    assert not torch.equal(y, y.sort(dim=1).values)  # not grouped by class
    assert (F.one_hot(y, 5).sum(1) == 10).all()  # 5 classes x 10 presentations each


def test_mann_configs_pick_the_paper_episode_and_encoder(compose_cfg):
    cfg = compose_cfg(["algo=mann", "dataset=omniglot"])
    assert cfg.backbone._target_ == "metarun.backbones.MLP" and cfg.backbone.hidden == []
    assert (cfg.task.way, cfg.task.shot, cfg.task.query, cfg.task.meta_batch) == (5, 10, 0, 16)
    assert cfg.dataset.image_size == 20 and cfg.algo.way == 5
    assert compose_cfg(["algo=mann", "dataset=glyphs", "backbone=conv4"]).backbone.hidden == 64
    lstm = compose_cfg(["experiment=mann_omniglot_5way", "algo=lstm"])
    assert lstm.algo.memory == "none" and lstm.algo._target_ == "metarun.algorithms.MANN"
    preset = compose_cfg(["experiment=mann_omniglot_5way"])
    assert preset.algo.memory == "lrua"
    # The recipe measured in docs/results.md, for MANN and for its LSTM baseline in the same sweep.
    for cfg in (preset, lstm):
        assert (cfg.algo.optimizer.lr, cfg.dataset.shift, cfg.train.steps) == (0.003, 2, 106000)
        # 3e-3 until batch 100,000, then 3e-4 (the scheduler steps once per batch)
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.Adam([weight], lr=cfg.algo.optimizer.lr)
        scheduler = instantiate(cfg.algo.scheduler)(optimizer)
        rates = []
        for _ in range(cfg.train.steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert rates[0] == rates[99999] == 0.003 and rates[100000] == rates[-1] == pytest.approx(
            3e-4
        )
    assert preset.algo.read_heads == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algo=mann"], "algo=mann classifies; it cannot run on a regression dataset"),
        (["algo=mann", "dataset=glyphs", *GLYPHS_SMALL, "task.query=5"], "set task.query=0"),
        (
            ["algo=maml", "dataset=glyphs", *GLYPHS_SMALL, "task.query=0"],
            "query must be at least 1",
        ),
    ],
)
def test_mann_task_mismatches_are_user_errors(compose_cfg, overrides, message):
    from metarun.experiment import build_experiment

    with pytest.raises(MetarunError, match=message):
        cfg = _without_hydra(compose_cfg(overrides))
        build_experiment(cfg, run_dir=Path("unused"))


@pytest.mark.slow
def test_mann_and_lstm_in_one_sweep_compare_per_presentation(metarun_cli, tmp_path):
    proc = metarun_cli("-m", "algo=mann", "algo.memory=lrua,none", *MANN_TINY, "logger=none")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "report"
    report.main([str(tmp_path / "outputs" / "multirun"), "--out", str(out)])
    rows = {r["algo.memory"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert set(rows) == {"lrua", "none"}
    runs = report.find_runs([str(tmp_path / "outputs")])
    runs = {r.overrides["algo.memory"]: r.summary for r in runs}
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # with its 3rd panel
    for algo, row in rows.items():
        for i in (1, 2, 3, 4, 5, 10):
            assert float(row[f"acc_inst{i}"]) == pytest.approx(runs[algo][f"test/acc_inst{i}"])


@pytest.mark.parametrize(
    "write, read_order, reads_old",
    [("add", None, True), ("add", "after_write", False), ("key", "before_write", True)],
)
def test_write_kind_and_read_order_pick_what_is_written_and_what_is_read(
    write, read_order, reads_old
):
    mem = LRUAMemory(2, slots=4, width=3, heads=1, gamma=0.5, write=write, read_order=read_order)
    mem = mem.double()
    key, add = [[0.2, -0.5, 0.4]], [[0.6, -0.3, 0.1]]
    _set_outputs(mem, key, gate=[-BIG])
    if write == "add":
        with torch.no_grad():
            mem.add.weight.zero_()
            mem.add.bias.copy_(torch.atanh(torch.tensor(add, dtype=torch.float64)).flatten())
    state = _state(MEM0, USAGE0, [0.0, 0.0, 1.0, 0.0])
    reads, new = mem.step(torch.zeros(1, 2, dtype=torch.float64), state)
    m0, k = torch.tensor(MEM0, dtype=torch.float64), torch.tensor(key[0], dtype=torch.float64)
    m1 = m0.clone()
    m1[1] = torch.tensor((add if write == "add" else key)[0], dtype=torch.float64)
    torch.testing.assert_close(new.memory[0], m1)  # the add vector (write=add), else the key
    addressed = m0 if reads_old else m1  # before_write: this step's write is not yet seen
    cos = torch.stack([torch.dot(k, row) / (k.norm() * row.norm()) for row in addressed])
    weights = torch.exp(cos) / torch.exp(cos).sum()
    torch.testing.assert_close(new.read_weights[0, 0], weights)
    torch.testing.assert_close(reads[0, 0], weights @ m1)  # read contents: always the new memory
    with pytest.raises(MetarunError, match="algo.write='erase' is unknown"):
        LRUAMemory(2, write="erase")
    with pytest.raises(MetarunError, match="algo.read_order='later' is unknown"):
        LRUAMemory(2, read_order="later")


def test_key_strength_sharpens_the_addressing():
    mem = LRUAMemory(2, slots=4, width=3, heads=1, key_strength=True).double()
    _set_outputs(mem, [[0.2, -0.5, 0.4]], gate=[-BIG])
    state = _state(MEM0, USAGE0, [0.0, 0.0, 1.0, 0.0])
    h = torch.zeros(1, 2, dtype=torch.float64)
    with torch.no_grad():
        mem.strength.weight.zero_()
        mem.strength.bias.fill_(-BIG)  # softplus -> 0: strength 1, the paper's plain softmax
        soft = mem.step(h, state)[1].read_weights
        mem.strength.bias.fill_(5.0)  # strength 1 + softplus(5) ~ 6
        sharp = mem.step(h, state)[1].read_weights
    assert sharp.max() > soft.max() and sharp.argmax() == soft.argmax()
    plain = LRUAMemory(2, slots=4, width=3, heads=1).double()
    _set_outputs(plain, [[0.2, -0.5, 0.4]], gate=[-BIG])
    torch.testing.assert_close(plain.step(h, state)[1].read_weights, soft)
