"""A stand-in for macOS and Windows on Linux: the calls they lack are taken away before anything runs.

Put this folder first on PYTHONPATH (the tests do) and every interpreter started with it, the grader's
sandbox children included (they inherit PYTHONPATH), runs without `os.fork`, `os.pidfd_open`,
`os.unshare`, `socket.SOCK_SEQPACKET`, `socket.send_fds`/`recv_fds` and the `resource` module, so a path
that quietly depends on one of them fails here as it would there.
"""

import os
import socket
import sys

for module, names in (
    (os, ("fork", "pidfd_open", "unshare", "setns")),
    (socket, ("SOCK_SEQPACKET", "send_fds", "recv_fds")),
):
    for name in names:
        if hasattr(module, name):
            delattr(module, name)
try:  # psutil's Linux module needs `resource`; on macOS and Windows psutil uses what those have instead
    import psutil  # noqa: F401 -- loaded before `resource` is taken away below
except ImportError:
    pass
sys.modules["resource"] = None  # `import resource` raises ImportError, as on Windows
