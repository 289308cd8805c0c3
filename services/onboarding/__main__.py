import asyncio

from services.onboarding.app import main

asyncio.run(main())
