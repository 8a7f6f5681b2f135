"""Rendered shell is safe: every value in launch.sh and sbatch.sh comes out of a real bash
literally; names and variable names are checked; secrets named in slurm.pass_env reach the
job from the submitting shell and are written nowhere; plan files holding slurm.env are 0600.

All in-process: the rendered scripts run under bash with stand-ins for python, srun and
sbatch that print what they were given (the real Slurm cluster is tests/test_slurm.py's).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from launcher import cli
from launcher import plan as plan_mod
from launcher.executors import slurm
from launcher.recipe.load import load

from conftest import REPO, TINY

# Spaces, both quotes, a command substitution and backticks: each would create a marker file
# in the directory the script runs in if the shell evaluated it.
NASTY = "we ird 'sq' \"dq\" $(touch PWNED) `touch PWNED2` ${HOME} \\ end"


def _nasty(tmp_path: Path) -> tuple[str, list[Path]]:
    return NASTY, [tmp_path / "PWNED", tmp_path / "PWNED2"]


def _tiny_copy(path: Path) -> Path:
    """tiny_news under another file name (its data paths made absolute)."""
    text = TINY.read_text().replace("Path(__file__).resolve().parent.parent", f"Path({str(REPO)!r})")
    path.write_text(text)
    return path


def _bin(tmp_path: Path, name: str, body: str) -> Path:
    """An executable stand-in on a private PATH directory."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    path = d / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return d


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_launch_sh_passes_paths_and_names_literally(tmp_path):
    weird, markers = _nasty(tmp_path)
    (tmp_path / weird).mkdir()
    recipe = _tiny_copy(tmp_path / weird / f"{weird}.py")  # a recipe file with that name
    out = tmp_path / weird / "plan out"
    rc, stdout, stderr = _main("render", recipe, "--nodes", "2", "--nproc-per-node", "1",
                               "--out", out)
    assert rc == 0, stderr
    plan = plan_mod.Plan.from_json((out / "plan.json").read_text())
    # The recipe's file name is no run name: it is made one (it names the job and rendezvous).
    assert plan.name.startswith("we-ird-sq-dq-touch") and set(plan.name) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    launch = out / "launch.sh"
    assert subprocess.run(["bash", "-n", str(launch)]).returncode == 0
    bindir = _bin(tmp_path, "fake-python", 'printf "%s\\n" "$@"\n')
    env = dict(os.environ, PYTHON=str(bindir / "fake-python"), MASTER_ADDR="10.0.0.1",
               NODE_RANK="1")
    env.pop("RDZV_ID", None)
    proc = subprocess.run(["bash", str(launch)], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split("\n")[:-1]
    assert args[-1] == str(out / "plan.json")  # the exact path, quotes and all
    # No rendezvous id unless RDZV_ID says one: accelerate's per-node form cannot pass one,
    # and both forms must meet.
    assert "--rdzv-id" not in args
    assert args[args.index("--node-rank") + 1] == "1"
    assert args[args.index("--rdzv-endpoint") + 1] == "10.0.0.1:29500"
    assert not any(m.exists() for m in markers)


def test_sbatch_sh_passes_env_values_and_paths_literally(tmp_path):
    weird, markers = _nasty(tmp_path)
    run_dir = tmp_path / weird / "run"
    rc, stdout, stderr = _main(
        "render", TINY, "--executor", "slurm", f"run.output_dir={run_dir}",
        "slurm.env=" + json.dumps({"WEIRD": weird, "NCCL_DEBUG": "WARN"}),
        "slurm.partition=gpu", "--out", tmp_path / "plan")
    assert rc == 0, stderr
    sbatch = tmp_path / "plan" / "sbatch.sh"
    text = sbatch.read_text()
    assert subprocess.run(["bash", "-n", str(sbatch)]).returncode == 0
    # Run the script body: srun prints the value it sees and its arguments.
    bindir = _bin(tmp_path, "srun", 'printf "WEIRD=%s\\n" "$WEIRD"; printf "%s\\n" "$@"\n')
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(sbatch)], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[0] == f"WEIRD={weird}"
    assert f"{run_dir / 'slurm'}/%j" in lines  # submitit's folder, literally
    assert not any(m.exists() for m in markers)
    # slurm.env's values are in these two files: only their owner may read them.
    for name in ("sbatch.sh", "plan.json"):
        assert stat.S_IMODE((tmp_path / "plan" / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "plan" / "launch.sh").stat().st_mode) == 0o755
    assert "#SBATCH --partition=gpu" in text


def test_without_slurm_env_plan_files_keep_the_usual_mode(tmp_path):
    rc, _, stderr = _main("render", TINY, "--executor", "slurm", "--out", tmp_path / "plan")
    assert rc == 0, stderr
    mask = os.umask(0)
    os.umask(mask)
    for name in ("sbatch.sh", "plan.json"):
        assert stat.S_IMODE((tmp_path / "plan" / name).stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("override, field, needle", [
    ("run.name=my run", "run.name", "'my run'"),
    ("run.name=$(touch x)", "run.name", "letters, digits"),
    ('slurm.env={"A B": "1"}', "slurm.env", "'A B'"),
    ('slurm.env={"X=$(id)": "1"}', "slurm.env", "not a variable name"),
    ('slurm.env={"1X": "1"}', "slurm.env", "not a variable name"),
    ("slurm.pass_env=WANDB_API_KEY=abc", "slurm.pass_env", "no values"),
    ("slurm.extra_sbatch=--reservation=x y\nz", "slurm.extra_sbatch", "one sbatch option"),
    ("slurm.partition=gpu\n#SBATCH --x", "slurm.partition", "control character"),
    ("run.output_dir=/tmp/a\n$(touch x)", "run.output_dir", "control character"),
])
def test_names_and_variable_names_are_checked(tmp_path, override, field, needle):
    rc, stdout, stderr = _main("render", TINY, override, "--out", tmp_path / "plan")
    assert rc == 2, stdout + stderr
    assert f"{field}:" in stderr and needle in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "plan").exists()


def test_pass_env_forwards_by_name_and_writes_no_value(tmp_path, monkeypatch):
    """A real submission through submitit to a stand-in sbatch: it sees the variable in its
    environment; no file anywhere under the run directory holds the value."""
    secret = "s3cr3t-VALUE-0123456789"
    seen = tmp_path / "seen"
    bindir = _bin(tmp_path, "sbatch", f'''
echo "key=${{WANDB_API_KEY:+set}} umask=$(umask) slurm_umask=${{SLURM_UMASK:-}}" > {seen}
[ "$WANDB_API_KEY" = {secret} ] && echo value-ok >> {seen}
stat -c %a "$1" >> {seen}
echo "Submitted batch job 4242"
''')
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("WANDB_API_KEY", secret)
    run_dir = tmp_path / "run"
    loaded = load(TINY, ["run.executor=slurm", f"run.output_dir={run_dir}",
                         "slurm.pass_env=WANDB_API_KEY", 'slurm.env={"NCCL_DEBUG": "WARN"}'])
    plan = plan_mod.build(loaded)
    ex = slurm.SlurmExecutor()
    assert ex.check(plan) is None
    mask = os.umask(0o022)
    try:
        rc = ex.submit(plan, ex.prepare(plan), console=Console(file=io.StringIO()))
    finally:
        os.umask(mask)
    assert rc == 0
    report = seen.read_text().split("\n")
    # sbatch had the variable, the job keeps the user's umask, submitit's copy was private.
    assert report[0] == "key=set umask=0077 slurm_umask=0022", report
    assert report[1] == "value-ok" and report[2] == "600"
    assert (run_dir / "slurm" / "job.json").read_text().strip() == '{"job_id": "4242"}'
    holding = [p for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert holding == []
    assert "WANDB_API_KEY" in (run_dir / "plan" / "plan.json").read_text()  # the name only
    for name in ("plan.json", "sbatch.sh"):
        assert stat.S_IMODE((run_dir / "plan" / name).stat().st_mode) == 0o600


def test_pass_env_with_an_export_list_adds_the_names(tmp_path):
    plan = plan_mod.build(load(TINY, ["slurm.pass_env=WANDB_API_KEY,HF_TOKEN",
                                      "slurm.extra_sbatch=--export=NONE"]))
    assert slurm.parameters(plan)["additional_parameters"]["export"] == "WANDB_API_KEY,HF_TOKEN"
    plan = plan_mod.build(load(TINY, ["slurm.pass_env=WANDB_API_KEY"]))
    assert "additional_parameters" not in slurm.parameters(plan)  # sbatch's default: ALL


def test_pass_env_unset_in_the_submitting_shell_is_refused(tmp_path, monkeypatch):
    bindir = _bin(tmp_path, "sbatch", "exit 1\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    rc, stdout, stderr = _main("run", TINY, "--executor", "slurm", "--dry-run",
                               "slurm.pass_env=WANDB_API_KEY",
                               f"run.output_dir={tmp_path / 'run'}")
    assert rc == 2 and "slurm.pass_env: WANDB_API_KEY is not set in this shell" in stderr
    assert not (tmp_path / "run").exists()
