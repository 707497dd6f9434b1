"""A FastAPI service whose `async def` routes make the blocking calls teams really make
(tests/integration/servers), each against a real server the test started on 127.0.0.1.

Run: python -m uvicorn fastapi_app:app --port P    (or gunicorn -k uvicorn.workers.UvicornWorker)
Environment (each route needs only its own): LOOPSPY_SLOW (URL of tests/py/slow_server.py),
LOOPSPY_PG (host:port of PostgreSQL, user postgres, trust auth), LOOPSPY_REDIS (redis URL),
LOOPSPY_S3 (moto's endpoint URL), LOOPSPY_MYSQL (host:port of MariaDB, user root).

Every route blocks the loop once, for about 150 ms, on the line marked `# BLOCK-LINE name`, then
prints `BLOCK {"name": ..., "ms": ..., "route": ..., "pid": ...}` on stdout. Clients are made
when the app starts (for the services whose variable is set), so a block is only its call.
"""
import asyncio
import json
import os
import time

import boto3
import numpy as np
import psycopg2
import pymysql
import redis
import requests
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

app = FastAPI()
CLIENTS = {}
# How long a CPU route blocks: its work is repeated until then, as a fixed size is not a fixed
# time (one 1600x1600 matmul took 46-77 ms, and a loop over 600k floats 45-52 ms, on one
# machine: both at the 50 ms threshold).
SECONDS = 0.15
# What the upload route sends to S3: big enough that moto takes well over 50 ms to store it
# (8 MB took 48 ms once on a loaded machine).
UPLOAD = os.urandom(24 * 1024 * 1024)


@app.on_event("startup")
def connect():
    env = os.environ.get
    if env("LOOPSPY_PG"):
        host, port = env("LOOPSPY_PG").split(":")
        CLIENTS["engine"] = create_engine(f"postgresql+psycopg2://postgres@{host}:{port}/postgres")
        with CLIENTS["engine"].connect() as c:
            c.execute(text("SELECT 1"))
        pg = psycopg2.connect(host=host, port=int(port), user="postgres", dbname="postgres")
        pg.autocommit = True
        CLIENTS["pg"] = pg
    if env("LOOPSPY_REDIS"):
        CLIENTS["redis"] = redis.Redis.from_url(env("LOOPSPY_REDIS"))
        CLIENTS["redis"].ping()
        import celery_app

        CLIENTS["celery"] = celery_app.slow_add
    if env("LOOPSPY_S3"):
        s3 = boto3.client(
            "s3",
            endpoint_url=env("LOOPSPY_S3"),
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="uploads")
        CLIENTS["s3"] = s3
    if env("LOOPSPY_MYSQL"):
        host, port = env("LOOPSPY_MYSQL").split(":")
        CLIENTS["mysql"] = pymysql.connect(host=host, port=int(port), user="root", autocommit=True)


def say(tag, **fields):
    # One write: worker processes share the pipe, and print() under PYTHONUNBUFFERED writes
    # the text and its newline separately, so two workers' lines could interleave.
    os.write(1, ("%s %s\n" % (tag, json.dumps(fields))).encode())


def report(name, route, t0):
    say("BLOCK", name=name, route=route, ms=(time.monotonic() - t0) * 1000.0, pid=os.getpid())


@app.get("/health")
async def health():
    return {"ok": True}


async def housekeeping():
    # Background work in a task of its own, serving no request.
    t0 = time.monotonic()
    time.sleep(0.12)  # BLOCK-LINE housekeeping
    report("housekeeping", None, t0)


@app.post("/housekeeping")
async def start_housekeeping():
    CLIENTS["housekeeping"] = asyncio.get_running_loop().create_task(housekeeping())
    return {"started": True}


@app.get("/sleep/{seconds}")
async def nap(seconds: float):
    t0 = time.monotonic()
    time.sleep(seconds)  # BLOCK-LINE sleep
    report("sleep", "/sleep/{seconds}", t0)
    return {"slept": seconds}


@app.get("/quotes/{symbol}")
async def get_quote(symbol: str):
    t0 = time.monotonic()
    r = requests.get(os.environ["LOOPSPY_SLOW"] + "/quote/" + symbol, timeout=5)  # BLOCK-LINE requests
    report("requests", "/quotes/{symbol}", t0)
    return {"status": r.status_code}


@app.get("/orders/{order_id}")
async def get_order(order_id: int):
    t0 = time.monotonic()
    with Session(CLIENTS["engine"]) as session:
        row = session.execute(text("SELECT :id AS id, pg_sleep(0.15)"), {"id": order_id}).one()  # BLOCK-LINE sqlalchemy
    report("sqlalchemy", "/orders/{order_id}", t0)
    return {"id": row.id}


@app.get("/invoices/{invoice_id}")
async def get_invoice(invoice_id: int):
    t0 = time.monotonic()
    with CLIENTS["pg"].cursor() as cur:
        cur.execute("SELECT %s, pg_sleep(0.15)", (invoice_id,))  # BLOCK-LINE psycopg2
        cur.fetchone()
    report("psycopg2", "/invoices/{invoice_id}", t0)
    return {"id": invoice_id}


@app.get("/sessions/{key}")
async def get_session(key: str):
    t0 = time.monotonic()
    value = CLIENTS["redis"].blpop(["queue:" + key], timeout=0.15)  # BLOCK-LINE redis
    report("redis", "/sessions/{key}", t0)
    return {"value": value}


@app.put("/uploads/{name}")
async def upload(name: str):
    body = UPLOAD
    t0 = time.monotonic()
    CLIENTS["s3"].put_object(Bucket="uploads", Key=name, Body=body)  # BLOCK-LINE boto3
    report("boto3", "/uploads/{name}", t0)
    return {"size": len(body)}


@app.get("/reports/{report_id}")
async def build_report(report_id: int):
    t0 = time.monotonic()
    total = CLIENTS["celery"].delay(report_id, 1).get(timeout=10)  # BLOCK-LINE celery
    report("celery", "/reports/{report_id}", t0)
    return {"total": total}


@app.get("/matrix/{size}")
async def multiply(size: int):
    # The same matrix for every request of a size (made by the first one).
    if ("matrix", size) not in CLIENTS:
        CLIENTS[("matrix", size)] = np.random.default_rng(0).random((size, size))
    a = CLIENTS[("matrix", size)]
    t0 = time.monotonic()
    while True:
        product = a @ a  # BLOCK-LINE numpy_matmul
        if time.monotonic() - t0 >= SECONDS:
            break
    report("numpy_matmul", "/matrix/{size}", t0)
    return {"trace": float(product.trace())}


@app.get("/scores/{n}")
async def score(n: int):
    values = np.arange(n, dtype=np.float64)
    t0 = time.monotonic()
    total = 0.0
    while time.monotonic() - t0 < SECONDS:
        for v in values:  # BLOCK-LINE numpy_loop
            total += v * 0.5
    report("numpy_loop", "/scores/{n}", t0)
    return {"total": total}


@app.get("/customers/{customer_id}")
async def get_customer(customer_id: int):
    t0 = time.monotonic()
    with CLIENTS["mysql"].cursor() as cur:
        cur.execute("SELECT %s, SLEEP(0.15)", (customer_id,))  # BLOCK-LINE pymysql
        cur.fetchone()
    report("pymysql", "/customers/{customer_id}", t0)
    return {"id": customer_id}
