"""What ``--help`` (and a bare invocation) of ``metarun-eval`` and ``metarun-predict`` print."""

USAGE = {
    "metarun-eval": """\
usage: metarun-eval checkpoint=PATH [config overrides ...]

Meta-tests a trained model on the fixed test episodes of its run: mean and 95% CI per metric.
  checkpoint=PATH   a best.pt / last.pt, or a run folder (its checkpoints/best.pt)
  overrides         keys of the checkpoint's config, e.g. task.shot=5 test.episodes=1000
                    algo.eval_inner_steps=10 (see the run's .hydra/config.yaml)
example: metarun-eval checkpoint=outputs/2026-11-27/10-00-00 test.episodes=1000""",
    "metarun-predict": """\
usage: metarun-predict checkpoint=PATH support=DIR query=DIR [out=FILE.csv]

Classifies your own images with a trained model.
  checkpoint=PATH   a best.pt / last.pt, or a run folder (its checkpoints/best.pt)
  support=DIR       one sub-folder per class, each with one or more images
  query=DIR         the images to classify (sub-folders included)
  out=FILE.csv      where the predictions go (default predictions.csv)
example: metarun-predict checkpoint=outputs/2026-11-27/10-00-00 support=my_support query=mine""",
}
