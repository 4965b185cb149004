"""Seeds a fresh `sluice serve` with one of each resource (a run, a webhook
endpoint with a message, a spare token) and writes a schemathesis config
whose dictionaries hold their ids, so that about half the generated
requests name things that exist and reach the handlers' real work instead
of a 404.

Usage: seed.py BASE_URL TOKEN CONFIG_PATH
"""

import sys
import time

import requests

base, token, config_path = sys.argv[1], sys.argv[2], sys.argv[3]
http = requests.Session()
http.headers["Authorization"] = f"Bearer {token}"


def call(method, path, **kw):
    res = http.request(method, base + path, timeout=30, **kw)
    if res.status_code >= 300:
        sys.exit(f"seeding: {method} {path} answered {res.status_code}: {res.text}")
    return res.json()


endpoint = call(
    "POST",
    "/v1/webhooks/endpoints",
    json={"url": "http://127.0.0.1:9/nowhere", "event_types": ["greet.*"]},
)["id"]
run = call("POST", "/v1/runs", json={"flow": "greet", "wait": True})
if run["status"] != "succeeded":
    sys.exit(f"seeding: the greet run did not succeed: {run}")
messages = []
for _ in range(50):
    messages = call("GET", f"/v1/webhooks/messages?endpoint={endpoint}")["items"]
    if messages:
        break
    time.sleep(0.1)
if not messages:
    sys.exit("seeding: the greet run's webhook step left no message")
spare = call("POST", "/v1/tokens", json={"name": "spare", "scope": "read"})["id"]
vendor = call("GET", "/v1/connections/sandbox/vendor?limit=1")["items"][0]["remote_id"]


def dictionary(name, values):
    quoted = ", ".join(f'"{v}"' for v in values)
    return f"[dictionaries.{name}]\nvalues = [{quoted}]\n"


def operation(path_regex, binding, method_regex=None):
    out = f'[[operations]]\ninclude-path-regex = "{path_regex}"\n'
    if method_regex:
        out += f'include-method-regex = "{method_regex}"\n'
    params = ", ".join(f'"{k}" = {{ dictionary = "{d}", probability = 0.5 }}' for k, d in binding.items())
    return out + f"parameters = {{ {params} }}\n"


with open(config_path, "w") as f:
    f.write(dictionary("flows", ["greet"]))
    f.write(dictionary("runs", [run["id"]]))
    f.write(dictionary("endpoints", [endpoint]))
    f.write(dictionary("messages", [messages[0]["id"]]))
    f.write(dictionary("tokens", [spare]))
    f.write(dictionary("connections", ["sandbox"]))
    f.write(dictionary("vendors", [vendor]))
    f.write(dictionary("hooks", ["greet"]))
    # Deleting the flow would turn the rest of the run into 404s: only reads and toggles.
    f.write(operation("^/v1/flows/\\\\{id\\\\}", {"path.id": "flows"}, "^(GET|POST)$"))
    f.write(operation("^/v1/runs$", {"query.flow": "flows"}, "^GET$"))
    f.write(operation("^/v1/runs/\\\\{id\\\\}", {"path.id": "runs"}))
    f.write(operation("^/v1/webhooks/endpoints/\\\\{id\\\\}", {"path.id": "endpoints"}))
    f.write(operation("^/v1/webhooks/messages$", {"query.endpoint": "endpoints"}))
    f.write(operation("^/v1/webhooks/messages/\\\\{id\\\\}", {"path.id": "messages"}))
    f.write(operation("^/v1/tokens/\\\\{id\\\\}", {"path.id": "tokens"}))
    f.write(operation("^/v1/connections/\\\\{id\\\\}/\\\\{entity\\\\}/\\\\{remote_id\\\\}$", {"path.id": "connections", "path.remote_id": "vendors"}))
    f.write(operation("^/v1/connections/\\\\{id\\\\}(/syncs|/\\\\{entity\\\\})?$", {"path.id": "connections"}))
    f.write(operation("^/v1/hooks/", {"path.path": "hooks"}))
print(f"seeded: run {run['id']}, endpoint {endpoint}, message {messages[0]['id']}, token {spare}, vendor {vendor}")
