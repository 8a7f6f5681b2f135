import logging
import os
import sys

from launcher.engine.main import main

code = main(sys.argv[1:])  # an exception leaves through the normal exit, traceback and all
if code != 0:
    # A refusal leaves the normal way: torchrun stops the other ranks as soon as one exits,
    # and they must have had the time to log their own refusal line.
    sys.exit(code)
# main() has closed everything the rank wrote (trackers, trace, metrics, process group);
# the interpreter's own teardown of torch, transformers and datasets would take another ~2 s
# per rank before torchrun sees the job end (measured: benchmarks/NOTES.md), so skip it.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
