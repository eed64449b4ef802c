#!/usr/bin/env bash
# `make run` on this checkout: it must serve the login page, and a second
# `make run` must keep the users, the audit events and the keys.
set -euo pipefail
cd "$(dirname "$0")/.."
BIND=127.0.0.1:18765
log=$(mktemp)

start() {
  setsid make run BIND=$BIND >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    if curl -fsS "http://$BIND/accounts/login/" -o /tmp/login.html 2>/dev/null; then return 0; fi
    if ! kill -0 $pid 2>/dev/null; then cat "$log"; echo "make run exited early"; exit 1; fi
    sleep 1
  done
  cat "$log"; echo "make run did not serve the login page in time"; exit 1
}
stop() { kill -TERM -- -$pid 2>/dev/null || true; wait $pid 2>/dev/null || true; }

state() {
  PORTAL_DOTENV=.env .venv/bin/python - <<'PY'
import os, hashlib, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup()
from django.contrib.auth import get_user_model
from audit.models import AuditEvent
print(sorted(get_user_model().objects.values_list("username", flat=True)), AuditEvent.objects.count())
PY
}

start
grep -q 'name="password"' /tmp/login.html
ready=$(curl -s -o /dev/null -w '%{http_code}' "http://$BIND/readyz")
stop
env_digest=$(sha256sum .env | cut -d' ' -f1)
first=$(state)
echo "after first make run: $first (readyz $ready)"

start
stop
second=$(state)
echo "after second make run: $second"
[ "$env_digest" = "$(sha256sum .env | cut -d' ' -f1)" ] || { echo ".env keys changed"; exit 1; }
users1=${first% *}; users2=${second% *}; events1=${first##* }; events2=${second##* }
[ "$users1" = "$users2" ] || { echo "users changed"; exit 1; }
[ "$events2" -ge "$events1" ] || { echo "audit events were lost"; exit 1; }
[ "$ready" = "200" ] || { echo "readyz was $ready, not 200"; exit 1; }
PORTAL_DOTENV=.env .venv/bin/python manage.py audit_verify
echo "make run: served, restarted, kept users, events and keys"
