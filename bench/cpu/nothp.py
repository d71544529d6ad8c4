"""Runs a command with transparent huge pages disabled for it and its children
(prctl PR_SET_THP_DISABLE, inherited across exec): a diagnostic for compare.py's
`--diagnostics` contenders, to show what MADV_HUGEPAGE costs or saves on a machine.

    python nothp.py CMD [ARGS...]
"""

import ctypes
import os
import sys

PR_SET_THP_DISABLE = 41

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_THP_DISABLE) failed: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
