"""Run by every Python process the tests launch, at its start (conftest.cli_env puts this
directory on their PYTHONPATH, so the interpreter imports it).

The packages that only the test extra installs, as references for checks made in pytest's
own process (scikit-learn and seqeval, and scipy under them), are hidden from it. A launched
process then sees what an install of launcher brings, and a module of ours that imported one
of them by mistake would fail here as it would for a user. It also spares every rank
transformers' import of scipy.optimize (its object-detection loss imports it whenever scipy is
installed): ~0.45 s of CPU a rank, ~100 ranks a suite (benchmarks/NOTES.md §6c).

A process of a background launch (BACKGROUND set, tests/together.py) takes nice 19, and one
that leads a session of its own (torchrun, each rank) gives that session's autogroup nice 19
too. Linux shares the CPU between autogroups first, so nice alone would not keep a rank behind
the foreground tests."""

import os
import sys

BACKGROUND = "LAUNCHER_TESTS_BACKGROUND"

for _name in ("scipy", "sklearn", "seqeval"):
    # None in sys.modules: `import` raises ImportError and importlib.util.find_spec (which
    # transformers asks) answers None, as if the package were not installed.
    sys.modules.setdefault(_name, None)

if os.environ.get(BACKGROUND):
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        if os.getsid(0) == os.getpid():  # never the autogroup of pytest's own session
            with open("/proc/self/autogroup", "w") as group:
                group.write("19")
    except OSError:  # no autogroups here: nice alone does it
        pass
