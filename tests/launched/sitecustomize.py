"""Run by every Python process the tests launch, at its start (conftest.cli_env puts this
directory on their PYTHONPATH, so the interpreter imports it).

The packages that only the test extra installs, as references for checks made in pytest's
own process (scikit-learn and seqeval, and scipy under them), are hidden from it. A launched
process then sees what an install of launcher brings, and a module of ours that imported one
of them by mistake would fail here as it would for a user. It also spares every rank
transformers' import of scipy.optimize (its object-detection loss imports it whenever scipy is
installed): ~0.45 s of CPU a rank, ~100 ranks a suite (benchmarks/NOTES.md §6c).

It also shares transformers' table of lazy imports between the session's processes (below).

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


# transformers builds the table of its lazy imports by reading every file of its models/ tree
# (3,348 files in 5.24) at every `import transformers`: ~0.6 s of CPU in each of the suite's
# ~100 rank processes (benchmarks/NOTES.md §6d). The table is a function of the installed
# files alone, so the first process of a test session to build it leaves it in the session's
# directory (CACHE, made by conftest.py) and the others read it back. Only that table is
# cached: transformers' modules are imported as ever. marshal, not pickle: reading the cache
# back runs no code. Should transformers drop or rename this function, nothing is cached and
# nothing else changes. tests/test_launched_env.py checks that the table read back is the one
# transformers builds.
CACHE = "LAUNCHER_TESTS_IMPORT_CACHE"
PATCHED = "transformers.utils.import_utils"


def _cache_import_structure(module) -> None:
    import contextlib
    import functools
    import hashlib
    import marshal
    import tempfile
    from importlib.metadata import version

    build = getattr(getattr(module, "define_import_structure", None), "__wrapped__", None)
    try:
        directory, release = os.environ[CACHE], version("transformers")
    except Exception:  # no metadata to key the cache by: leave transformers as it is
        return
    if build is None:
        return

    @functools.lru_cache  # as upstream's: one table a path, the same object every call
    def define_import_structure(module_path, prefix=None):
        key = f"{release} {sys.version} {module_path} {prefix}".encode()
        path = os.path.join(directory, hashlib.sha1(key).hexdigest() + ".marshal")
        try:
            with open(path, "rb") as cached:
                return marshal.load(cached)
        except (OSError, EOFError, ValueError, TypeError):
            pass
        structure = build(module_path, prefix)
        # Written before it is returned: transformers' __init__ adds its own names to it.
        written = None
        try:
            with tempfile.NamedTemporaryFile("wb", dir=directory, delete=False) as out:
                written = out.name
                marshal.dump(structure, out)
            os.replace(written, path)
        except (OSError, ValueError):  # the session's directory gone; a value marshal refuses
            if written:
                with contextlib.suppress(OSError):
                    os.unlink(written)
        return structure

    module.define_import_structure = define_import_structure


class _Patching:
    """Finds PATCHED as the import system would, and has its loader patch it as soon as it has
    run, before any module imports a name from it."""

    def find_spec(self, name, path=None, target=None):
        if name != PATCHED:
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenPatch(spec.loader)
        return spec


class _ThenPatch:
    """The module's own loader, with the patch applied once the module has run."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _cache_import_structure(module)


if os.path.isdir(os.environ.get(CACHE, "")):
    sys.meta_path.insert(0, _Patching())
