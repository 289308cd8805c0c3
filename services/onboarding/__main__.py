from services.onboarding.app import main
from services.runtime.host import run_process

run_process(main)
