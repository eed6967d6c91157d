"""The command lines of ``metarun-eval`` and ``metarun-predict``: ``key=value`` arguments, and
what ``--help`` (and a bare invocation) print; the console the tools print their tables on."""

from __future__ import annotations

import sys

from rich.console import Console

from metarun.errors import MetarunError, print_line

PIPED_WIDTH = 200  # columns of a tool's tables when its output is a file or a CI log

USAGE = {
    "metarun-eval": """\
usage: metarun-eval checkpoint=PATH [split=val] [head=NAME] [runs=DIR] [config overrides ...]

Meta-tests a trained model on the fixed test episodes of its run: mean and 95% CI per metric.
  checkpoint=PATH   a best.pt / last.pt, or a run folder (its checkpoints/best.pt)
  split=val         the validation episodes (val.*) instead of the test ones
  head=NAME         classify with a test-time head on the checkpoint's image embeddings:
                    prototype, logistic (RFS), finetune (Baseline) or cosine (Baseline++);
                    any image checkpoint (pretrain, ProtoNet, MAML without its output layer)
  runs=DIR          instead: Lake et al.'s 20 one-shot runs (all_runs.zip of the Omniglot
                    repository, unzipped): each run's error % and their mean
  overrides         keys of the checkpoint's config, e.g. task.shot=5 test.episodes=1000
                    test.protocol=within_alphabet test.views=8 algo.eval_inner_steps=10
                    (see the run's .hydra/config.yaml)
example: metarun-eval checkpoint=outputs/2026-11-27/10-00-00 test.episodes=1000""",
    "metarun-predict": """\
usage: metarun-predict checkpoint=PATH support=DIR query=DIR [out=FILE.csv] [overrides]

Classifies your own images with a trained model.
  checkpoint=PATH   a best.pt / last.pt, or a run folder (its checkpoints/best.pt)
  support=DIR       one sub-folder per class, each with one or more images
  query=DIR         the images to classify (sub-folders included)
  out=FILE.csv      where the predictions go (default predictions.csv)
  overrides         e.g. test.views=8: also score warped views of every image (test-time
                    augmentation; test.view_warp.* sets the warps)
example: metarun-predict checkpoint=outputs/2026-11-27/10-00-00 support=my_support query=mine""",
}


def tool_console() -> Console:
    """The terminal's own width in a terminal; piped, a wide one (a file has no width, and rich's
    80-column default would squeeze table cells)."""
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def parse_args(argv: list[str], tool: str, special: dict[str, bool]) -> tuple[dict, list[str]]:
    """Split ``key=value`` args into the tool's own keys and config overrides."""
    own, overrides = {}, []
    for arg in argv:
        if "=" not in arg:
            raise MetarunError(f"{tool} takes key=value arguments, got {arg!r}")
        key, value = arg.split("=", 1)
        if key in special:
            own[key] = value
        else:
            overrides.append(arg)
    missing = [k for k, required in special.items() if required and k not in own]
    if missing:
        raise MetarunError(f"{tool} needs {' '.join(f'{k}=...' for k in missing)}")
    return own, overrides


def run_tool(fn, argv, tool: str) -> None:
    """``fn(args)`` with the usage on ``--help`` or no arguments, a ``MetarunError`` as one
    line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE[tool])
        return
    if not args:
        print_line(USAGE[tool])
        sys.exit(2)
    try:
        fn(args)
    except MetarunError as e:
        print_line(f"{tool}: error: {e}")
        sys.exit(2)
