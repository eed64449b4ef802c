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

# A file import through the API, run by the task worker `make run` starts.
import_through_the_worker() {
  PORTAL_DOTENV=.env .venv/bin/python - "$BIND" <<'PY'
import json, os, sys, time, urllib.request, uuid
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup()
from django.contrib.auth import get_user_model
from portal.models import Tenant
from portal.services import token_create
from search.models import KnowledgeBase

bind = sys.argv[1]
acme = Tenant.objects.get(slug="acme")
_, token = token_create(user=get_user_model().objects.get(username="carol"), tenant=acme, days=1, label="ci")
kb = KnowledgeBase.objects.filter(tenant=acme).order_by("id").first()
line = f"The CI import check {uuid.uuid4().hex}."
boundary = uuid.uuid4().hex
body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ci.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\n{line}\n\r\n--{boundary}--\r\n").encode()
headers = {"Authorization": f"Bearer {token}"}
request = urllib.request.Request(f"http://{bind}/api/v1/kbs/{kb.pk}/imports", data=body, method="POST",
                                 headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
with urllib.request.urlopen(request, timeout=30) as response:
    assert response.status == 202, response.status
    location = response.headers["Location"]
for _ in range(240):
    with urllib.request.urlopen(urllib.request.Request(f"http://{bind}{location}", headers=headers), timeout=30) as r:
        job = json.load(r)
    if job["status"] in ("succeeded", "failed"):
        break
    time.sleep(0.5)
assert job["status"] == "succeeded" and job["added"] == 1, job
print(f"import job {job['id']}: {job['status']}, {job['added']} added by the task worker")
PY
}

start
grep -q 'name="password"' /tmp/login.html
ready=$(curl -s -o /dev/null -w '%{http_code}' "http://$BIND/readyz")
import_through_the_worker || { cat "$log"; echo "the task worker did not import the file"; stop; exit 1; }
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
