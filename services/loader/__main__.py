import asyncio

from services.loader.app import main

asyncio.run(main())
