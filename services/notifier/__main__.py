"""`python -m services.notifier`: run the notifier."""

from services.common.app import run_service
from services.notifier.app import create_app

if __name__ == "__main__":
    run_service("notifier", create_app)
