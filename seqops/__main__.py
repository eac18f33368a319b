import sys

from seqops.cli import main

sys.exit(main())
