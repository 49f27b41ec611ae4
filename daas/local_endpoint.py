"""The local AWS endpoint: moto's AWS backends served by gunicorn (`python -m daas.local_endpoint -p PORT`).

moto's own server is werkzeug's development server, which closes every connection and says it is
not for production. Here moto's WSGI app runs in one gunicorn process (moto keeps its state in
memory: one process, many threads; long polls hold a thread each), with keep-alive connections
and an access log line per AWS call, which tells what each image costs in requests.

One lookup is memoised: for every request, moto's dispatcher lists its package folder (a listdir and
~150 isdir calls) to recognise service names. That listing cannot change while the server runs;
computing it once took the endpoint's CPU per request down by about a sixth (see README, Performance).
"""
from __future__ import annotations

import argparse
import os

from moto import backends
from moto.server import DomainDispatcherApplication, create_backend_app

from daas.serving import AWS_ACCESS_LOG_FORMAT, serve

_MODULES = frozenset(backends.list_of_moto_modules())
THREADS = 64  # every long poll (workers, controller, Flower, reply listeners) holds one


def _list_of_moto_modules() -> frozenset[str]:
    return _MODULES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m daas.local_endpoint")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=4566)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds queue URLs from it
    backends.list_of_moto_modules = _list_of_moto_modules  # looked up as an attribute per request
    serve(DomainDispatcherApplication(create_backend_app), args.host, args.port, workers=1, threads=THREADS,
          timeout=60, name="daas-aws", access_log_format=AWS_ACCESS_LOG_FORMAT)


if __name__ == "__main__":
    main()
