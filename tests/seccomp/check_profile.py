#!/usr/bin/python3
"""Loads a container seccomp profile (the OCI/containerd JSON that the kubelet hands to the
runtime) into this process through libseccomp — the library runc uses — and checks what it
allows: prints one `ok`/`FAIL` line per check and exits non-zero on any failure.
Needs Debian's python3-seccomp (it runs as /usr/bin/python3)."""
import errno
import json
import os
import socket
import sys

import seccomp

OPS = {"SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
       "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE, "SCMP_CMP_GT": seccomp.GT, "SCMP_CMP_GE": seccomp.GE}


def action(rule):
    name = rule["action"]
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(rule.get("errnoRet", errno.EPERM))
    raise SystemExit(f"unsupported action {name}")


def load(path):
    profile = json.load(open(path))
    f = seccomp.SyscallFilter(defaction=action({"action": profile["defaultAction"]}))
    for rule in profile["syscalls"]:
        args = [seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0)) for a in rule.get("args", [])]
        for name in rule["names"]:
            try:
                f.add_rule(action(rule), name, *args)
            except (RuntimeError, ValueError):
                pass  # a syscall this architecture does not have: runtimes skip it too
    f.load()


def attempt(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno


def main(path):
    load(path)
    checks = [
        ("AF_INET stream (the loopback bridge)", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(), 0),
        ("AF_INET datagram (DNS)", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close(), 0),
        ("AF_UNIX stream (the socket to the forwarder)", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close(), 0),
        ("AF_INET6 refused", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM), errno.EAFNOSUPPORT),
        ("AF_INET raw refused", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), errno.EPERM),
        ("AF_PACKET refused", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM), errno.EAFNOSUPPORT),
        ("raw sockets refused in any family", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_RAW), errno.EPERM),
        ("unshare refused", lambda: os.unshare(os.CLONE_NEWUSER) if hasattr(os, "unshare") else (_ for _ in ()).throw(OSError(errno.EPERM, "")), errno.EPERM),
        ("ordinary file I/O allowed", lambda: open("/proc/self/status").read(), 0),
    ]
    failed = 0
    for what, fn, want in checks:
        got = attempt(fn)
        ok = got == want
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: errno {got} (want {want})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
