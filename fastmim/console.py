"""What the entry points print besides their results: fastmim's own warnings as one `warning:` line each (not
Python's two-line `file:line: Category: message` + source), so that a skipped image or a lowered setting reads
like the rest of the output."""
from __future__ import annotations

import os
import warnings

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def one_line_warnings() -> None:
    """Format warnings raised from fastmim's code as `warning: MESSAGE`; others keep Python's format."""
    original = warnings.formatwarning

    def formatted(message, category, filename, lineno, line=None):
        if os.path.abspath(filename).startswith(PACKAGE):
            return f"warning: {message}\n"
        return original(message, category, filename, lineno, line)

    warnings.formatwarning = formatted
