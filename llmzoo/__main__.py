import sys

from llmzoo.cli import main

sys.exit(main())
