"""An ``argparse`` parser whose errors are one line: ``prog: error: message`` and exit 2.

argparse prints its whole usage block before the error; on a command line with a dozen
threshold options that buries the one line that says what was wrong (``--help`` still shows
the usage)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
