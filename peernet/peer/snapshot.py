"""Keep the peer table on disk, so a restarted peer finds the network even when
every bootstrap server is down.  Records are verified again when loaded."""

import os

from twisted.application.service import Service
from twisted.internet import task, threads
from twisted.logger import Logger

from peernet import constants
from peernet.gossip.table import write_snapshot

log = Logger()
SNAPSHOT_FILE = "peers.snapshot"


def load_snapshot(table, state_dir, now):
    """Merge the saved table (if any) into ``table``; returns records loaded.

    Called at start-up, before the reactor runs.
    """
    path = os.path.join(state_dir, SNAPSHOT_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024 * 1024)
    except FileNotFoundError:
        return 0
    except OSError as e:
        log.warn("cannot read the peer snapshot {path}: {error}", path=path, error=e.strerror)
        return 0
    return table.load_snapshot_bytes(data, now)


class SnapshotService(Service):
    """Writes the table every ``interval`` seconds and at shutdown, off the
    reactor thread, atomically (temp file + rename)."""

    def __init__(self, reactor, table, state_dir, interval=constants.SNAPSHOT_INTERVAL):
        self.reactor = reactor
        self.table = table
        self.path = os.path.join(state_dir, SNAPSHOT_FILE)
        self.interval = interval
        self._loop = None
        self._writing = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.save)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def save(self):
        if self._writing is not None:
            return self._writing
        data = self.table.snapshot_bytes()
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      write_snapshot, self.path, data)

        def done(result):
            self._writing = None
            return result

        def failed(failure):
            log.warn("cannot write the peer snapshot {path}: {error}",
                     path=self.path, error=failure.getErrorMessage())

        d.addBoth(done)
        d.addErrback(failed)
        self._writing = d
        return d

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.save()
