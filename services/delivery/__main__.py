"""`python -m services.delivery`: run the delivery service."""

from services.common.app import run_service
from services.delivery.app import create_app
from services.delivery.moderation_keys import require_franking_key

if __name__ == "__main__":
    run_service("delivery", create_app, check=require_franking_key)
