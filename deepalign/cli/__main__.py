import sys

from deepalign.cli import main

sys.exit(main())
