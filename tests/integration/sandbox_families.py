"""Run a command with socket() refused for every address family but the
named ones, the way systemd's RestrictAddressFamilies= does it (a seccomp
filter answering EAFNOSUPPORT), so a unit's restriction can be tried on a
machine whose PID 1 is not systemd.

    python sandbox_families.py AF_INET,AF_INET6,AF_UNIX [--mdwe] [--syscalls FILE] \
        /path/to/program args...

``--mdwe`` also refuses memory that is both writable and executable
(prctl PR_SET_MDWE, the kernel's form of MemoryDenyWriteExecute=yes).
``--syscalls FILE`` allows only the system calls named in FILE (one per line)
and fails every other one with EPERM, like SystemCallFilter= with
SystemCallErrorNumber=EPERM.

Uses libseccomp through ctypes (Debian's libseccomp2, which systemd itself
needs); the filter is inherited by the exec'd program and its children.
"""

import ctypes
import ctypes.util
import errno
import os
import socket
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
#: Address families are small integers; Linux defines fewer than 50.
MAX_FAMILY = 64


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _lib():
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return lib


def allow_only(names):
    """Every system call not in ``names`` fails with EPERM."""
    lib = _lib()
    ctx = lib.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM)
    if not ctx:
        raise OSError("seccomp_init failed")
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:   # not a system call of this architecture
            continue
        rc = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None)
        if rc != 0:
            raise OSError(-rc, f"seccomp_rule_add({name}) failed")
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load failed")


def restrict(allowed):
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    socket_nr = lib.seccomp_syscall_resolve_name(b"socket")
    refuse = 0x00050000 | errno.EAFNOSUPPORT  # SCMP_ACT_ERRNO(EAFNOSUPPORT)
    for family in range(1, MAX_FAMILY):
        if family in allowed:
            continue
        cmp = (_Cmp * 1)(_Cmp(0, SCMP_CMP_EQ, family, 0))
        rc = lib.seccomp_rule_add_array(ctx, refuse, socket_nr, 1, cmp)
        if rc != 0:
            raise OSError(-rc, "seccomp_rule_add failed")
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load failed")


def deny_write_execute():
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed (Linux >= 6.3 needed)")


def main(argv):
    families = {int(getattr(socket, name)) for name in argv[1].split(",")}
    program = argv[2:]
    if program[0] == "--mdwe":
        deny_write_execute()
        program = program[1:]
    syscalls = None
    if program[0] == "--syscalls":
        with open(program[1]) as f:
            syscalls = f.read().split()
        program = program[2:]
    restrict(families)
    if syscalls is not None:
        allow_only(syscalls)
    os.execv(program[0], program)


if __name__ == "__main__":
    main(sys.argv)
