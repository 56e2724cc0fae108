"""``python -m experiments.a6``: the A.6 study (see ``experiments.a6.study``)."""

import sys

from experiments.a6.study import main

sys.exit(main())
