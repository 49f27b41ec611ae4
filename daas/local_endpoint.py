"""The local AWS endpoint: moto in server mode (`python -m daas.local_endpoint -H 127.0.0.1 -p PORT`).

This is moto's own server and command line, with one lookup memoised: for every request, moto's
dispatcher lists its package folder (a listdir and ~150 isdir calls) to recognise service names.
That listing cannot change while the server runs. Computing it once took the endpoint's CPU per
request down by about a sixth (see README, Performance), CPU the workers on the same machine get back.
"""
from __future__ import annotations

import sys

from moto import backends
from moto.server import main

_MODULES = frozenset(backends.list_of_moto_modules())


def _list_of_moto_modules() -> frozenset[str]:
    return _MODULES


if __name__ == "__main__":
    backends.list_of_moto_modules = _list_of_moto_modules  # looked up as an attribute per request
    sys.exit(main(sys.argv[1:]))
