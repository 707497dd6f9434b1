#!/usr/bin/env bash
# servers: the real servers and web stacks of the endpoint tests (tests/integration/servers/).
#
# - Debian packages: postgresql (initdb/postgres are run by the tests under a temp dir),
#   redis-server and mariadb-server (run by the tests on 127.0.0.1, never as services).
# - One virtualenv per interpreter under ${LOOPSPY_SERVERS:-/opt/loopspy-servers}/<minor>, so
#   these packages never reach the interpreters other tests use: CPython 3.11 and the newest
#   pyenv CPython (the live cases run on both) get the web stacks, drivers and clients below,
#   plus moto's S3 server; every other pyenv CPython 3.8-3.13 gets aiohttp.
# A missing piece is reported; its tests then print a SKIPPED line.
set -uo pipefail
root="${PYENV_ROOT:-$HOME/.pyenv}"
dest="${LOOPSPY_SERVERS:-/opt/loopspy-servers}"
PACKAGES=(uvicorn gunicorn fastapi django aiohttp sqlalchemy psycopg2-binary pymysql redis
          boto3 "celery[redis]" numpy requests "moto[server]")

missing=()
for cmd in initdb:postgresql redis-server:redis-server mariadbd:mariadb-server; do
  bin=${cmd%%:*}
  command -v "$bin" >/dev/null 2>&1 || [ -x "$(ls /usr/lib/postgresql/*/bin/"$bin" 2>/dev/null | head -n 1)" ] \
    || missing+=("${cmd##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >/dev/null 2>&1 \
    || echo "install-test-deps: could not install ${missing[*]} (their endpoint tests will skip)"
  # The packages start their services; the tests run their own instances.
  for s in postgresql redis-server mariadb; do
    systemctl disable --now "$s" >/dev/null 2>&1 || service "$s" stop >/dev/null 2>&1 || true
  done
fi

# The full stack on 3.11 and the newest pyenv CPython; aiohttp alone on every other one (the
# aiohttp case runs on every version).
newest=$(ls -d "$root"/versions/3.1[0-9].* 2>/dev/null | grep -E '/3\.[0-9]+\.[0-9]+$' | sort -V | tail -n 1)
for dir in "$root"/versions/3.{8,9,10,11,12,13}.*; do
  py="$dir/bin/python3"
  [ -x "$py" ] || continue
  minor=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  venv="$dest/$minor"
  if [ "$minor" = 3.11 ] || [ "$dir" = "$newest" ]; then
    want=("${PACKAGES[@]}")
    check="fastapi, uvicorn, gunicorn, django, aiohttp, sqlalchemy, psycopg2, pymysql, redis, boto3, celery, numpy, requests, moto, packaging"
  else
    want=(aiohttp)
    check="aiohttp"
  fi
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $check" 2>/dev/null; then
    continue
  fi
  mkdir -p "$dest"
  "$py" -m venv "$venv" \
    && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${want[@]}" \
    || echo "install-test-deps: ${want[*]} could not be installed for $py (endpoint tests on $minor will skip)"
done
