"""The baseline for `bench_ping`: a bare Litestar app serving nubo's own `/ping` handler, nothing else.

Run as ``python -m bench.bare_app PORT``: uvicorn with the options `nubo serve` uses (1 worker, auto
loop/http, no access log, no server header, no proxy headers), so the only difference is nubo's app.
"""

from __future__ import annotations

import sys

import uvicorn
from litestar import Litestar

from nubo.server.health import ping

app = Litestar(route_handlers=[ping], debug=False)


def main(port: int) -> None:
    uvicorn.run(
        "bench.bare_app:app",
        host="127.0.0.1",
        port=port,
        workers=1,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
        server_header=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
