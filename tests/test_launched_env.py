"""What every process the suite launches starts with (tests/launched/sitecustomize.py): the
test extra's reference packages hidden, and transformers' table of lazy imports read back from
the session's directory, the very table transformers builds, not a stale or partial one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, cli_env

# The table of transformers' models/ tree, as a launched process ends up with it, in JSON:
# sets and frozensets as sorted lists; `patched` says whether the cache served this process.
SHOW = """
import json, sys
from pathlib import Path
import transformers
from transformers.utils import import_utils
path = Path(transformers.__file__).parent / "models"
table = import_utils.define_import_structure(path, prefix="models")
print(json.dumps({
    "patched": import_utils.define_import_structure.__module__ == "sitecustomize",
    "table": {",".join(sorted(k)): {m: sorted(v) for m, v in sorted(d.items()) if
                                    m.startswith("models.")} for k, d in table.items()},
    "hidden": [n for n in ("scipy", "sklearn", "seqeval") if n in sys.modules
               and sys.modules[n] is None],
}))
"""


def _launched(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", SHOW], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_launched_processes_share_the_import_table_transformers_builds(tmp_path):
    env = dict(cli_env(), LAUNCHER_TESTS_IMPORT_CACHE=str(tmp_path))
    first = _launched(env)  # builds the table and leaves it in tmp_path
    assert first["patched"] and len(os.listdir(tmp_path)) >= 1
    second = _launched(env)  # reads it back
    unpatched = _launched(dict(env, LAUNCHER_TESTS_IMPORT_CACHE=str(tmp_path / "none")))
    assert not unpatched["patched"]  # no session directory: transformers as it is
    assert second["table"] == first["table"] == unpatched["table"]
    assert len(second["table"][""]) > 500  # configurations of hundreds of model types
    assert first["hidden"] == second["hidden"] == ["scipy", "sklearn", "seqeval"]
