"""The kinds of problem a dataset poses (its ``problem``) and the metric each is judged by."""

#: problem -> (metric, mode): the validation objective, the "best" checkpoint and the report's
#: ranking follow ``<split>/<metric>``; mode says whether lower ("min") or higher is better.
MONITOR = {
    "classification": ("acc", "max"),
    "regression": ("mse", "min"),
    "reinforcement": ("return", "max"),
}
