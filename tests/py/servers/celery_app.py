"""The Celery app of the FastAPI service (tests/integration/servers): Redis as broker and result
backend (LOOPSPY_REDIS). The test starts a worker with
`celery -A celery_app worker --pool solo`; `slow_add` takes 150 ms."""
import os
import time

from celery import Celery

celery = Celery("loopspy_test", broker=os.environ["LOOPSPY_REDIS"], backend=os.environ["LOOPSPY_REDIS"])
celery.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@celery.task
def slow_add(a, b):
    time.sleep(0.15)
    return a + b
