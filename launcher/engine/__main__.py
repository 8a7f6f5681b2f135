import sys

from launcher.engine.main import leave, main

leave(main(sys.argv[1:]))  # an exception leaves through the normal exit, traceback and all
