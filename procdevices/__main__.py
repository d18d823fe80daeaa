import sys

from procdevices.cli import console

sys.exit(console())
