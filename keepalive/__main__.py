import sys

from keepalive.cli import main

sys.exit(main())
