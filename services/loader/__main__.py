import uvloop

from services.loader.app import main

uvloop.run(main())  # uvloop's event loop (C, libuv): bench/latency.py load p95 -15% (docs/scaling.md)
