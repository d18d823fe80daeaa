import sys

from procdevices.cli import main

sys.exit(main())
