#!/usr/bin/env bash
# Smoke check of the test Camunda engine and the BPMN fixtures, with curl only.
# Needs a running engine: scripts/camunda-engine.sh up (or CAMUNDA_TEST_URL set).
# Leaves no active external tasks behind (every instance it starts is finished).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${CAMUNDA_TEST_URL:-}" && -f "$REPO/.services/camunda.env" ]]; then
  # shellcheck disable=SC1091
  . "$REPO/.services/camunda.env"
fi
B="${CAMUNDA_TEST_URL:?CAMUNDA_TEST_URL not set and no .services/camunda.env}"
FIX="$REPO/tests/fixtures/bpmn"
J='Content-Type: application/json'
RUN="smoke-$$-$RANDOM"
pass=0 fail=0

check() { # name expected actual
  if [[ "$2" == "$3" ]]; then pass=$((pass + 1)); echo "ok   $1"
  else fail=$((fail + 1)); echo "FAIL $1: expected [$2] got [$3]"; fi
}
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
post() { curl -s -o /tmp/smoke.$$ -w '%{http_code}' -H "$J" -d "$2" "$B$1"; }
body() { cat /tmp/smoke.$$; }
trap 'rm -f /tmp/smoke.$$' EXIT

for f in say_hello nova_publicacao; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -F "deployment-name=$f" \
    -F enable-duplicate-filtering=true -F "data=@$FIX/$f.bpmn" "$B/deployment/create")
  check "deploy $f" 200 "$code"
done

start() { # key businessKey [variables-json]
  post "/process-definition/key/$1/start" "{\"businessKey\":\"$2\",\"variables\":${3:-{\}}}" >/dev/null
  body | jget 'd["id"]'
}
fetch() { # topic businessKey worker
  post /external-task/fetchAndLock "{\"workerId\":\"$3\",\"maxTasks\":1,\"asyncResponseTimeout\":5000,\"topics\":[{\"topicName\":\"$1\",\"lockDuration\":30000,\"businessKey\":\"$2\"}]}" >/dev/null
  body | jget 'd[0]["id"] if d else ""'
}
ended_at() { # processInstanceId activityId -> count of finished activity instances
  curl -s "$B/history/activity-instance?processInstanceId=$1&activityId=$2&finished=true" | jget 'len(d)'
}

# --- say_hello: typed variables round trip
PI=$(start say_hello_process "$RUN-a" '{"name":{"type":"String","value":"Mundo"}}')
T=$(fetch say_hello "$RUN-a" w1)
check "fetchAndLock got a task" yes "$([[ -n "$T" ]] && echo yes || echo no)"
check "extendLock" 204 "$(post "/external-task/$T/extendLock" '{"workerId":"w1","newDuration":60000}')"
check "complete wrong worker status" 400 "$(post "/external-task/$T/complete" '{"workerId":"other"}')"
check "complete wrong worker type" RestException "$(body | jget 'd["type"]')"
check "complete unknown id" 404 "$(post /external-task/00000000-0000-0000-0000-000000000000/complete '{"workerId":"w1"}')"
check "complete" 204 "$(post "/external-task/$T/complete" '{"workerId":"w1","variables":{
  "payload":{"type":"Json","value":"{\"a\":1}"},
  "count":{"type":"Long","value":9007199254740993},
  "ratio":{"type":"Double","value":0.25},
  "nothing":{"type":"Null","value":null},
  "obj":{"type":"Object","value":"{\"x\":[1,2]}","valueInfo":{"objectTypeName":"java.util.LinkedHashMap","serializationDataFormat":"application/json"}}}}')"
vars=$(curl -s "$B/history/variable-instance?processInstanceId=$PI&deserializeValues=false" |
  jget '",".join(sorted(v["name"]+":"+v["type"]+"="+json.dumps(v["value"]) for v in d))')
check "history variables (deserializeValues=false)" \
  'count:Long=9007199254740993,name:String="Mundo",nothing:Null=null,obj:Object="{\"x\":[1,2]}",payload:Json="{\"a\":1}",ratio:Double=0.25' "$vars"
check "say_hello reached done_end" 1 "$(ended_at "$PI" done_end)"

# --- nova_publicacao: BPMN error INVALID_INPUT -> boundary path
PI=$(start nova_publicacao_process "$RUN-b")
T=$(fetch nova_publicacao "$RUN-b" w1)
check "bpmnError" 204 "$(post "/external-task/$T/bpmnError" '{"workerId":"w1","errorCode":"INVALID_INPUT","errorMessage":"bad"}')"
check "reached invalid_input_end" 1 "$(ended_at "$PI" invalid_input_end)"

# --- failure with retries 0 -> incident; then resolve and complete
PI=$(start nova_publicacao_process "$RUN-c")
T=$(fetch nova_publicacao "$RUN-c" w1)
check "failure retries=0" 204 "$(post "/external-task/$T/failure" '{"workerId":"w1","errorMessage":"boom","errorDetails":"trace","retries":0,"retryTimeout":0}')"
check "incident created" failedExternalTask "$(curl -s "$B/incident?processInstanceId=$PI" | jget 'd[0]["incidentType"] if d else ""')"
check "set retries" 204 "$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "$J" -d '{"retries":1}' "$B/external-task/$T/retries")"
T=$(fetch nova_publicacao "$RUN-c" w1)
check "complete after retry" 204 "$(post "/external-task/$T/complete" '{"workerId":"w1"}')"
check "reached done_end" 1 "$(ended_at "$PI" done_end)"

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
