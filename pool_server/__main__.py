import sys

from pool_server.cli import main

sys.exit(main())
