"""``python -m sdfm ...`` (also ``torchrun --nproc_per_node=P -m sdfm solve|train ...``)."""

import sys

from sdfm.cli.main import main

sys.exit(main())
