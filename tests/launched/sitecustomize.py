"""Run by every Python process the tests launch, at its start (conftest.cli_env puts this
directory on their PYTHONPATH, so the interpreter imports it): the packages that only the
test extra installs, as references for checks made in pytest's own process (scikit-learn and
seqeval, and scipy under them), are hidden from it. A launched process then sees what an
install of launcher brings, and a module of ours that imported one of them by mistake would
fail here as it would for a user. It also spares every rank transformers' import of
scipy.optimize (its object-detection loss imports it whenever scipy is installed): ~0.45 s of
CPU a rank, ~100 ranks a suite (benchmarks/NOTES.md §6c)."""

import sys

for _name in ("scipy", "sklearn", "seqeval"):
    # None in sys.modules: `import` raises ImportError and importlib.util.find_spec (which
    # transformers asks) answers None, as if the package were not installed.
    sys.modules.setdefault(_name, None)
