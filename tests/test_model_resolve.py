"""The model and tokenizer are found before launch: a local directory (with weights when
model.pretrained), the HF cache, or the hub. Not found: one line, exit 2, the nearest cached
names, nothing written, and no minute of hub retries.

The HF cache is a directory these tests lay out as huggingface_hub does (refs/main naming a
snapshot); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from launcher import cli

from conftest import REPO, TINY

TINY_BERT = REPO / "models" / "tiny-bert"


def _main(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _cache_model(cache: Path, name: str, *, weights: bool) -> None:
    """A model in an HF hub cache: tiny-bert's config and tokenizer (and empty weights)."""
    repo = cache / ("models--" + name.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for f in ("config.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(TINY_BERT / f, snapshot / f)
    if weights:
        (snapshot / "model.safetensors").write_bytes(b"")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "hf-cache"
    _cache_model(root, "bert-base-uncased", weights=True)
    _cache_model(root, "google/electra-small-discriminator", weights=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def _refused(run_dir, rc, stderr, *needles):
    assert rc == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for needle in needles:
        assert needle in stderr, stderr
    assert not run_dir.exists()


def test_misspelled_hub_name_offline_names_the_nearest_cached(tmp_path, cache):
    rc, _, err = _main("run", TINY, "model.name=bert-base-uncasd", "--dry-run",
                       f"run.output_dir={tmp_path / 'run'}")
    _refused(tmp_path / 'run', rc, err, "model.name:", "'bert-base-uncasd'", "HF_HUB_OFFLINE=1",
             "nearest cached: bert-base-uncased", "did you mean 'bert-base-uncased'?")


def test_cached_model_plans(tmp_path, cache):
    rc, out, err = _main("run", TINY, "model.name=bert-base-uncased", "model.pretrained=true",
                         "--dry-run", f"run.output_dir={tmp_path / 'run'}")
    assert rc == 0, err
    # Cached config and tokenizer, no weights: fine for random init, refused when pretrained.
    name = "model.name=google/electra-small-discriminator"
    rc, _, err = _main("run", TINY, name, "model.pretrained=false", "--dry-run",
                       f"run.output_dir={tmp_path / 'run2'}")
    assert rc == 0, err
    rc, _, err = _main("run", TINY, name, "model.pretrained=true", "--dry-run",
                       f"run.output_dir={tmp_path / 'run3'}")
    _refused(tmp_path / "run3", rc, err, "google/electra-small-discriminator", "not in the HF cache")


def test_local_directory_without_weights_asks_for_pretrained_false(tmp_path, cache):
    rc, _, err = _main("run", TINY, "model.pretrained=true", "--dry-run",
                       f"run.output_dir={tmp_path / 'run'}")
    _refused(tmp_path / 'run', rc, err, "model.name:", "has a config but no weights",
             "set model.pretrained=False")


def test_local_model_with_weights_plans(tmp_path, cache):
    model = tmp_path / "model"
    shutil.copytree(TINY_BERT, model)
    (model / "model.safetensors").write_bytes(b"")
    rc, _, err = _main("run", TINY, f"model.name={model}", "model.pretrained=true", "--dry-run",
                       f"run.output_dir={tmp_path / 'run'}")
    assert rc == 0, err


@pytest.mark.parametrize("override, field, needle", [
    ("model.tokenizer=/no/such/dir", "model.tokenizer", "does not exist"),
    ("model.tokenizer=bert-base-uncasd", "model.tokenizer", "nearest cached: bert-base-uncased"),
    (f"model.tokenizer={REPO / 'data'}", "model.tokenizer", "no tokenizer files"),
    ("model.name=./no/such/model", "model.name", "does not exist"),
    ("model.name=not a hub name", "model.name", "neither a local directory nor a valid"),
    (f"model.name={REPO / 'README.md'}", "model.name", "is a file"),
    (f"model.name={REPO / 'data'}", "model.name", "no config.json"),
])
def test_bad_model_or_tokenizer(tmp_path, cache, override, field, needle):
    rc, _, err = _main("run", TINY, override, "--dry-run", f"run.output_dir={tmp_path / 'run'}")
    _refused(tmp_path / 'run', rc, err, f"{field}:", needle)


def test_unreachable_hub_is_asked_once_and_quickly(tmp_path, cache, monkeypatch):
    """No HF_HUB_OFFLINE, and a hub endpoint nobody listens on: refused at once."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    rc, _, err = _main("run", TINY, "model.name=bert-base-uncasd", "--dry-run",
                       f"run.output_dir={tmp_path / 'run'}")
    _refused(tmp_path / 'run', rc, err, "the hub (127.0.0.1) cannot be reached",
             "nearest cached: bert-base-uncased")


def test_render_only_warns(tmp_path, cache):
    """`render` writes files for a cluster whose cache may hold the model: a warning."""
    rc, out, err = _main("render", TINY, "model.name=bert-large-uncased",
                         "--out", tmp_path / "plan")
    assert rc == 0 and not err.strip(), err
    assert "warning:" in out and "bert-large-uncased" in out and "`run` refuses this" in out
    assert (tmp_path / "plan" / "plan.json").is_file()


def test_model_directory_with_a_broken_config(tmp_path, cache):
    model = tmp_path / "model"
    shutil.copytree(TINY_BERT, model)
    (model / "config.json").write_text("[1, 2]")
    rc, _, err = _main("run", TINY, f"model.name={model}", "--dry-run",
                       f"run.output_dir={tmp_path / 'run'}")
    _refused(tmp_path / "run", rc, err, "model.name:", "config.json is not a JSON object")
