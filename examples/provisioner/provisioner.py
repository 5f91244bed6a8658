#!/usr/bin/env python3
"""An example provisioner for spotd's webhook provider: create -> EC2 CreateFleet, release -> TerminateInstances.

spotd (serve --provider webhook --provision-webhook-url http://HOST:PORT/provision --webhook-secret S) POSTs two
calls here (see `webhooks:` in openapi.yaml):

  {"action":"create","id":"prov-...","pool":"spot-b","capacity_type":"spot","instance_type":"p5.48xlarge",
   "zone":"us-east-1b",...}                                   Idempotency-Key: prov-...
  {"action":"release","node_id":"i-0abc...","pool":"spot-b",...}   Idempotency-Key: rel-...

On create it starts one instance with `aws ec2 create-fleet --type instant` (the Idempotency-Key is the fleet's
ClientToken, so a retried call starts nothing new) and registers it with spotd: POST /v1/nodes
{"id": <instance id>, "pool": ..., "provisioning_request_id": ...}. On release it runs `aws ec2 terminate-instances`
(an instance already gone is fine). Signatures are checked when SPOTD_WEBHOOK_SECRET is set.

Configuration (environment):
  SPOTD_URL                  spotd's base URL, e.g. http://127.0.0.1:8080
  SPOTD_TOKEN                a token with the scheduler role or above (to register nodes), if auth is on
  SPOTD_WEBHOOK_SECRET       the same secret as spotd's --webhook-secret (optional)
  LAUNCH_TEMPLATES           JSON: pool name -> EC2 launch template id, e.g. {"spot-b":"lt-0123..."}
  AWS_REGION, AWS_PROFILE... as for the AWS CLI
Run: python3 provisioner.py --port 8787
"""
import argparse
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("SPOTD_WEBHOOK_SECRET", "")
SPOTD_URL = os.environ.get("SPOTD_URL", "http://127.0.0.1:8080").rstrip("/")
SPOTD_TOKEN = os.environ.get("SPOTD_TOKEN", "")
TEMPLATES = json.loads(os.environ.get("LAUNCH_TEMPLATES", "{}"))


def aws(*args):
    """Runs the AWS CLI and returns its JSON answer."""
    out = subprocess.run(["aws", *args, "--output", "json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else {}


def signed(headers, body):
    if not SECRET:
        return True
    stamp, sig = headers.get("X-Spotd-Timestamp", ""), headers.get("X-Spotd-Signature", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return False
    want = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, sig)


def register(instance_id, call):
    req = urllib.request.Request(
        SPOTD_URL + "/v1/nodes", method="POST",
        data=json.dumps({"id": instance_id, "pool": call["pool"], "provisioning_request_id": call["id"]}).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": "Bearer " + SPOTD_TOKEN} if SPOTD_TOKEN else {})})
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError as error:
        if error.code != 409:  # 409: already registered (a retried call)
            raise


def create(call, key):
    template = TEMPLATES.get(call["pool"])
    if not template:
        return 422, f"no launch template for pool {call['pool']}"
    market = "spot" if call["capacity_type"] == "spot" else "on-demand"
    fleet = aws(
        "ec2", "create-fleet", "--type", "instant", "--client-token", key,
        "--launch-template-configs", json.dumps([{
            "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
            "Overrides": [{"InstanceType": call["instance_type"], "AvailabilityZone": call["zone"]}]}]),
        "--target-capacity-specification", json.dumps({"TotalTargetCapacity": 1, "DefaultTargetCapacityType": market}))
    instances = [i for group in fleet.get("Instances", []) for i in group.get("InstanceIds", [])]
    if not instances:
        errors = fleet.get("Errors", [])
        # No capacity now: a 5xx, so that spotd retries with backoff, then falls back to on-demand.
        return 503, "no instance: " + "; ".join(e.get("ErrorMessage", "") for e in errors)
    register(instances[0], call)
    return 201, instances[0]


def release(call):
    try:
        aws("ec2", "terminate-instances", "--instance-ids", call["node_id"])
    except subprocess.CalledProcessError as error:
        if "InvalidInstanceID.NotFound" in (error.stderr or ""):
            return 404, "already gone"
        raise
    return 200, "terminating"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(min(length, 1 << 16))
        if not signed(self.headers, body):
            return self.answer(401, "bad signature")
        try:
            call = json.loads(body)
            key = self.headers.get("Idempotency-Key", "")
            status, text = create(call, key) if call.get("action") == "create" else release(call)
        except Exception as error:  # a 5xx: spotd asks again after a backoff
            status, text = 500, str(error)
        self.answer(status, text)

    def answer(self, status, text):
        data = json.dumps({"detail": text}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    print(f"provisioner on {args.host}:{args.port}, spotd at {SPOTD_URL}", file=sys.stderr)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
