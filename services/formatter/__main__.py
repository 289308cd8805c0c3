import asyncio

from services.formatter.app import main

asyncio.run(main())
