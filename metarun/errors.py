"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

import sys


class MetarunError(Exception):
    """A problem with the user's config, data or environment, explained in one line.

    The message names what is wrong and how to fix it. Internal bugs raise ordinary exceptions
    so that they keep their traceback.
    """


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run after it saved a checkpoint it can be resumed from."""

    def __init__(self, signum: int, step: int, run_dir: str, command: str = "metarun") -> None:
        self.signum, self.step, self.run_dir, self.command = signum, step, run_dir, command
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        super().__init__(
            f"stopped by {name} at step {step}; checkpoint saved. Resume with: {command} "
            f"resume=true resume_dir={run_dir} (plus the run's original overrides)"
        )

    def __reduce__(self):  # sweep jobs in worker processes send their exceptions back pickled
        return type(self), (self.signum, self.step, self.run_dir, self.command)


def print_line(line: str) -> None:
    """``line`` on stderr in one write: parallel sweep jobs share the stream, and ``print``
    writes the newline separately, so two jobs' lines could interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def say(message: str) -> None:
    """What a long step (a dataset build) is doing, or took: one line on stdout, with the run's
    progress (stderr keeps warnings and errors)."""
    sys.stdout.write(f"metarun: {message}\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """A problem the run works around (it goes on): one line on stderr."""
    print_line(f"metarun: warning: {message}")
