import asyncio

from services.ts_gateway.app import main

asyncio.run(main())
