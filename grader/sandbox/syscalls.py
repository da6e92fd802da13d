"""The system calls a confined run may not make: a seccomp filter, loaded in each job before its first cell.

Guarantees, for every process of a job on the Linux backend once `Filter.load()` has run (the filter
is inherited across fork and exec and cannot be removed):

- no new namespaces: `unshare` and `setns` fail with EPERM, and so does `clone` with any namespace
  flag; `clone3`, whose flags the filter cannot read (they are in memory, not in a register), fails
  with ENOSYS, which makes the C library fall back to `clone` for threads and processes;
- no tracing or reading of other processes: `ptrace`, `process_vm_readv`/`writev`, `kcmp`;
- no mounts of any kind (the old and the new mount API), `chroot`, `pivot_root`;
- none of the kernel's large, rarely needed interfaces that most kernel exploits go through: `bpf`,
  `perf_event_open`, `userfaultfd`, `io_uring`, the key ring (`keyctl`, `add_key`, `request_key`),
  file handles (`open_by_handle_at`), modules, `kexec`, swap, `reboot`, `acct`, `quotactl`,
  `syslog`;
- sockets of the families a notebook may use only: Unix, IPv4 and IPv6 (all three end inside the run's
  empty network namespace) and netlink (its own namespace too); every other family (`AF_VSOCK`, which a
  network namespace does not isolate and virtual machines offer, `AF_PACKET`, `AF_ALG`, Bluetooth...)
  fails with EAFNOSUPPORT, as on a kernel without it;
- `personality` other than the default (no switching address-space randomisation off), `modify_ldt`;
- calls of another architecture's table (32-bit `int 0x80` on x86_64) end the whole process, not only
  the thread that made them: the filter is written for the native table only.

Everything else is allowed: a notebook needs files, threads, processes, memory and signals, and the
other layers (namespaces, user ids, limits) already bound them. A refused call fails with an error
the notebook can catch, as it would on a machine that lacks it, rather than killing the run.

Linux only, with libseccomp through the `pyseccomp` binding. Where libseccomp is missing,
`Filter.make()` returns None and says why: the backend runs without this layer and says so.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyseccomp

REFUSED = (
    # namespaces and the file-system view
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # other processes' memory and state
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # large kernel interfaces a notebook never needs
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    # the machine itself
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "modify_ldt",
)
"""System calls that fail with EPERM in a run."""

NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}
"""`clone` flags that make a namespace: a `clone` with any of them fails with EPERM."""

SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
"""The socket families a run may open; the others fail with EAFNOSUPPORT."""


@dataclass(frozen=True)
class Filter:
    """A seccomp filter built once in the warm worker; `load()` applies it to the calling process."""

    compiled: pyseccomp.SyscallFilter
    """The `pyseccomp.SyscallFilter`, rules added, not yet loaded."""

    @staticmethod
    def make() -> tuple[Filter | None, str]:
        """The filter, or None and why it cannot be built here (no libseccomp)."""
        try:
            import pyseccomp  # (Linux only, and may be missing: its absence is an answer, not an error)
        except (ImportError, RuntimeError, OSError) as e:  # pyseccomp raises RuntimeError without libseccomp
            return None, f"no seccomp filter ({type(e).__name__}: {e}; install libseccomp2 and pyseccomp)"
        compiled = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        refuse = pyseccomp.ERRNO(errno.EPERM)
        for name in REFUSED:
            try:
                compiled.add_rule(refuse, name)
            except (OSError, ValueError, RuntimeError):
                continue  # not a call of this architecture (its older or newer form is): nothing to refuse
        for flag in NAMESPACE_FLAGS.values():
            compiled.add_rule(refuse, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
        compiled.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
        no_family = pyseccomp.ERRNO(errno.EAFNOSUPPORT)
        allowed = set(SOCKET_FAMILIES.values())
        for call in ("socket", "socketpair"):
            # the kernel reads the family as a 32-bit int: a value with higher bits set is caught by the first rule
            compiled.add_rule(no_family, call, pyseccomp.Arg(0, pyseccomp.GT, max(allowed)))
            for family in sorted(set(range(max(allowed))) - allowed):
                compiled.add_rule(no_family, call, pyseccomp.Arg(0, pyseccomp.EQ, family))
        compiled.add_rule(refuse, "personality", pyseccomp.Arg(0, pyseccomp.NE, 0))
        compiled.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
        return Filter(compiled), ""

    def load(self) -> None:
        """Apply the filter to this process and everything it starts from now on (sets no_new_privs too)."""
        self.compiled.load()
