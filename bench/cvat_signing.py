"""CVAT's signing of tracker states, as its lambda manager does it (a timestamped, signed
JSON value the browser carries, unsigned again for the next call, 8 hours at most), for
the stand-ins of CVAT's relay in tests and benchmarks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

MAX_AGE_SECONDS = 8 * 3600


class StateSigner:
    def __init__(self, secret: bytes = b"cvat-tracker-state") -> None:
        self.secret = hashlib.sha256(secret).digest()

    def _mac(self, payload: str, stamp: str) -> str:
        return hmac.new(self.secret, f"{payload}:{stamp}".encode(), hashlib.sha256).hexdigest()

    def sign(self, state: object) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
        stamp = str(int(time.time()))
        return f"{payload}:{stamp}:{self._mac(payload, stamp)}"

    def unsign(self, signed: object) -> object:
        """The state, or ValueError for a tampered, foreign or expired one (CVAT: 400)."""
        if not isinstance(signed, str) or signed.count(":") != 2:
            raise ValueError("not a signed state")
        payload, stamp, mac = signed.split(":")
        if not hmac.compare_digest(mac, self._mac(payload, stamp)):
            raise ValueError("bad signature")
        if time.time() - int(stamp) > MAX_AGE_SECONDS:
            raise ValueError("signature expired")
        return json.loads(base64.urlsafe_b64decode(payload))
