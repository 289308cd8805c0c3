import asyncio

from services.audit.app import main

asyncio.run(main())
