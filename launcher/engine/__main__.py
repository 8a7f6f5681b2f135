import sys

from launcher.engine.main import main

sys.exit(main(sys.argv[1:]))
