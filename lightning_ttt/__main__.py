import sys

from lightning_ttt.cli import main

sys.exit(main())
