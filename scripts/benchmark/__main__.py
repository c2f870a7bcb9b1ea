import sys

from scripts.benchmark.run import main

sys.exit(main())
