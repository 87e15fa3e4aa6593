"""``serve.py`` whose process kills itself (SIGKILL) right after it commits a continued
object's state and before it answers: a Nuclio worker dying between commit and answer,
for tests. Nothing in it runs in production."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracker_state.stores import PartStore

import serve

_commit = PartStore.commit


def _commit_then_die(self, refs, new_states, answers=None):
    refs_out = _commit(self, refs, new_states, answers)
    if refs:
        os.kill(os.getpid(), signal.SIGKILL)
    return refs_out


PartStore.commit = _commit_then_die

if __name__ == "__main__":
    serve.run()
