import sys

from stableff.cli import main

sys.exit(main())
