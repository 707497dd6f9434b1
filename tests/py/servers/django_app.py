"""A one-file Django project served over ASGI (tests/integration/servers): an async view that
uses the sync ORM on PostgreSQL, the mistake Django only allows with DJANGO_ALLOW_ASYNC_UNSAFE
(which teams set to silence SynchronousOnlyOperation).

Run: LOOPSPY_PG=host:port python -m uvicorn django_app:application --port P
Routes: GET /orders/<int:order_id>/   the ORM query takes 150 ms (pg_sleep)
Each request prints `BLOCK {"ms": ..., "route": ..., "pid": ...}` on stdout.
"""
import json
import os
import time

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import django
from django.conf import settings

host, port = os.environ["LOOPSPY_PG"].split(":")
settings.configure(
    DEBUG=False,
    SECRET_KEY="loopspy-test",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[__name__],
    MIDDLEWARE=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "postgres",
            "USER": "postgres",
            "HOST": host,
            "PORT": port,
        }
    },
    USE_TZ=True,
)
django.setup()

from django.db import connection, models
from django.db.models.expressions import RawSQL
from django.http import JsonResponse
from django.urls import path


class Order(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = __name__


def say(tag, **fields):
    # One write: worker processes share the pipe, and print() under PYTHONUNBUFFERED writes
    # the text and its newline separately, so two workers' lines could interleave.
    os.write(1, ("%s %s\n" % (tag, json.dumps(fields))).encode())


# A query that takes 150 ms in the database.
SLOW_QUERY = RawSQL("pg_sleep(%s)", (0.15,))


async def order_detail(request, order_id):
    t0 = time.monotonic()
    order = Order.objects.annotate(wait=SLOW_QUERY).get(pk=order_id)  # BLOCK-LINE django
    say("BLOCK", ms=(time.monotonic() - t0) * 1000.0, route="/orders/<int:order_id>/", pid=os.getpid())
    return JsonResponse({"id": order.id, "name": order.name})


urlpatterns = [path("orders/<int:order_id>/", order_detail)]

with connection.schema_editor() as editor:
    if Order._meta.db_table not in connection.introspection.table_names():
        editor.create_model(Order)
Order.objects.get_or_create(pk=1, defaults={"name": "first"})
connection.close()

from django.core.asgi import get_asgi_application

application = get_asgi_application()
