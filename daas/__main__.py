import sys

from daas.cli import main

sys.exit(main())
