from services.runtime.host import run_process
from services.ts_gateway.app import main

run_process(main)
