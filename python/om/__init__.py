"""om for Python batch tools: start programs on the cluster, wait for them,
see and steer where they run.

``om.Popen`` is ``subprocess.Popen`` (pipes, ``communicate``, ``wait``,
``poll``, ``returncode``, ``kill``, ``send_signal``) for a program that runs
under om from its first instruction (the child registers with omd between
fork and exec), with ``node=`` to start it on a node, ``lock=`` to pin it,
and ``migrate(node)`` and ``node()``. Errors are ``om.Error`` with om's own
message: no omd, an unknown node, a refusal with its reason.
"""

import os
import subprocess

from om._om import Error, check, events as _events, lock as _lock, migrate as _migrate
from om._om import nodes as _nodes, ps as _ps, register as _register

__all__ = ["Error", "Popen", "events", "nodes", "ps"]


def nodes(socket=None):
    """The cluster's nodes: dicts with the keys of ``omctl --json nodes``."""
    return _nodes(socket)


def ps(socket=None):
    """Processes under om whose home is this node (``omctl --json ps``)."""
    return _ps(socket)


def events(socket=None):
    """What happens to this node's processes from now on, as dicts with the
    keys of ``omctl --json events`` (event: moved, home, refused, exited)."""
    return _events(socket)


class Popen(subprocess.Popen):
    """``subprocess.Popen`` under om."""

    def __init__(self, args, stdin=None, stdout=None, stderr=None, cwd=None, env=None, node=None, lock=False,
                 socket=None, **kwargs):
        # Fail here with om's message rather than in the child.
        check(socket)
        self._om_socket = socket
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        argv = [os.fsdecode(a) for a in argv]
        if kwargs.get("shell"):
            argv = ["/bin/sh", "-c"] + argv

        def under_om():
            _register(os.getpid(), argv, lock, node, socket)

        super().__init__(args, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env, preexec_fn=under_om,
                         **kwargs)

    def migrate(self, node):
        """Move it to ``node`` (a node id) while it runs, or ``"home"``."""
        if node == "home":
            to = None
        elif isinstance(node, int) and not isinstance(node, bool):
            to = node
        else:
            raise Error(f"{node!r} is not a node id; give a number or 'home'")
        _migrate(self.pid, to, self._om_socket)

    def node(self):
        """The node it runs on now."""
        for p in _ps(self._om_socket):
            if p["pid"] == self.pid:
                return p["where"]
        raise Error(f"process {self.pid} is not under om on this node")

    def lock(self, on=True):
        """Pin it where it is (or, with False, let it move again)."""
        _lock(self.pid, on, self._om_socket)
