"""Run by every Python process of a background launch at its start (tests/together.py puts
this directory first on the launch's PYTHONPATH, so the interpreter imports it): the process
takes nice 19, and one that leads a session of its own (torchrun, each rank) gives that
session's autogroup nice 19 too. Linux shares the CPU between autogroups first, so nice alone
would not keep a rank behind the foreground tests. Being found first, it also does what
tests/launched/sitecustomize.py does for every launched process."""

import os
import runpy

try:
    os.setpriority(os.PRIO_PROCESS, 0, 19)
    if os.getsid(0) == os.getpid():  # never the autogroup of pytest's own session
        with open("/proc/self/autogroup", "w") as group:
            group.write("19")
except OSError:  # no autogroups here: nice alone does it
    pass

runpy.run_path(os.path.join(os.path.dirname(__file__), os.pardir, "launched", "sitecustomize.py"))
