#!/usr/bin/env python3
"""Writes per-invocation variants of the committed events for scripts/bench.

    python3 bench/make_events.py --out target/bench/events --count 3000

Every committed event comes from one dev user. Replayed thousands of times a
second, that one user would be refused by the rate limits at once, and the
benchmark would measure 429s no real user sees. So the rate-limited and
state-changing functions get events from many users instead, signed like the
committed ones:

- token.jsonl, token-source.jsonl, chat.jsonl, reactions.jsonl, stage-hand.jsonl:
  the same request from count/3 viewers of `demo-room` in turn (at most 3 hits
  per user, as in production);
- start.jsonl: a new stream per invocation (user k goes live in `bench-start-k`),
  the 201 path of a real go-live, not the 200 of a retried start;
- stage.jsonl, stream-stats.jsonl, stream-viewers.jsonl: the streamer's reads
  (the raised hands, the stats, the viewer list), which only the host of a
  stream may make and which share one per-user limit: host k reads
  `bench-start-k`, so scripts/bench runs `start` before them. Those streams
  have no audience: the figures are a read's fixed cost (the rate-limit hit,
  the access check, the queries), not a long page's;
- webhook.jsonl: a distinct signed `participant_joined` per invocation (new event
  id, session and identity), the "applied" path, not the duplicate one: stage
  viewer j joins `bench-start-(j // 2)`, so the first count/2 of those streams
  have two viewers each, whom the stage's events then use;
- stage-invite.jsonl, stage-accept.jsonl, stage-decline.jsonl, stage-remove.jsonl:
  one stage round per stream with an audience, each request a first one, so
  every answer is a change, not a refusal: host r invites both viewers of
  `bench-start-r` (count invites), the first accepts and the second declines
  (count/2 each), and the host takes the guest off the stage again (count/2).
  scripts/bench runs them in that order, after `webhook`.

Each file holds one event per invocation, in the order they are to run (at most
count; fewer where there are fewer first requests to make, as for the stage's
answers): scripts/bench runs no more invocations than a file has events.

Standard library only. The secrets are the public development ones of
scripts/dev (events/README.md).
"""

import argparse
import base64
import copy
import hashlib
import hmac
import json
import os

SUPABASE_SECRET = b"local-dev-supabase-jwt-secret-at-least-32-chars"
LIVEKIT_KEY = "devkey"
LIVEKIT_SECRET = b"secret"
EXPIRES = 4102444800  # 2100-01-01, like the committed events
ISSUED = 1795683444


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims, secret):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def user(k):
    # Version 4, variant 8; distinct from the committed events' ...0001 and ...0002.
    return f"00000000-0000-4000-8000-1{k:011d}"


def supabase_bearer(uid):
    claims = {"aud": "authenticated", "exp": EXPIRES, "iat": ISSUED, "role": "authenticated", "sub": uid}
    return "Bearer " + hs256(claims, SUPABASE_SECRET)


def load(name):
    with open(os.path.join("events", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def as_user(event, uid):
    event = copy.deepcopy(event)
    event["headers"]["authorization"] = supabase_bearer(uid)
    return event


def with_body(event, **fields):
    body = json.loads(event["body"])
    body.update(fields)
    event["body"] = json.dumps(body, separators=(",", ":"))
    return event


def start_event(base, k):
    return with_body(as_user(base, user(k)), roomName=f"bench-start-{k}")


def host_read_event(base, k):
    """Host k's read of their own stream, `bench-start-k` (see start_event)."""
    event = as_user(base, user(k))
    room = f"bench-start-{k}"
    if event.get("pathParameters"):  # /live/streams/{id}/...
        event["pathParameters"]["id"] = room
        event["rawPath"] = event["rawPath"].replace("/demo-room/", f"/{room}/")
        http = event["requestContext"]["http"]
        http["path"] = http["path"].replace("/demo-room/", f"/{room}/")
    else:  # ?roomName=
        event["rawQueryString"] = event["rawQueryString"].replace("roomName=demo-room", f"roomName={room}")
        event["queryStringParameters"]["roomName"] = room
    return event


def stage_viewer(j):
    """Viewer j of the stage events, watching `bench-start-(j // 2)`."""
    return f"00000000-0000-4000-8000-2{j:011d}"


def stage_events(count):
    """The stage round of make_events's docstring, one list per function."""
    rooms = count // 2
    invite, accept, decline, remove = load("stage-invite"), load("stage-accept"), load("stage-decline"), load("stage-remove")
    return {
        "stage-invite": [
            with_body(as_user(invite, user(j // 2)), roomName=f"bench-start-{j // 2}", userId=stage_viewer(j))
            for j in range(2 * rooms)
        ],
        "stage-accept": [
            with_body(as_user(accept, stage_viewer(2 * r)), roomName=f"bench-start-{r}") for r in range(rooms)
        ],
        "stage-decline": [
            with_body(as_user(decline, stage_viewer(2 * r + 1)), roomName=f"bench-start-{r}") for r in range(rooms)
        ],
        "stage-remove": [
            with_body(as_user(remove, user(r)), roomName=f"bench-start-{r}", userId=stage_viewer(2 * r))
            for r in range(rooms)
        ],
    }


def webhook_event(base, k):
    event = copy.deepcopy(base)
    body = json.loads(event["body"])
    body["id"] = f"EV_bench_join_{k}"
    body["room"]["name"] = f"bench-start-{k // 2}"
    body["participant"]["sid"] = f"PA_bench_{k}"
    body["participant"]["identity"] = stage_viewer(k)
    raw = json.dumps(body, separators=(",", ":"))
    event["body"] = raw
    # LiveKit's signature: a JWT from the API key carrying the body's SHA-256.
    digest = base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode()
    claims = {"iss": LIVEKIT_KEY, "nbf": 1767225600, "exp": EXPIRES, "sha256": digest}
    event["headers"]["authorization"] = hs256(claims, LIVEKIT_SECRET)
    return event


def write(path, events):
    with open(path, "w", encoding="utf-8") as f:
        for event in events:
            f.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, required=True, help="invocations per function")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # At most 3 hits per viewer: within every default limit (token 60/min,
    # chat 5 per 10 s), with both the first-hit insert and the update path.
    users = max(1, -(-args.count // 3))
    for name in ("token", "token-source", "chat", "reactions", "stage-hand"):
        if os.path.exists(os.path.join("events", f"{name}.json")):
            base = load(name)
            write(os.path.join(args.out, f"{name}.jsonl"), (as_user(base, user(k % users)) for k in range(args.count)))
    for name in ("stage", "stream-stats", "stream-viewers"):
        base = load(name)
        write(os.path.join(args.out, f"{name}.jsonl"), (host_read_event(base, k % users) for k in range(args.count)))
    base = load("start")
    write(os.path.join(args.out, "start.jsonl"), (start_event(base, k) for k in range(args.count)))
    base = load("webhook")
    write(os.path.join(args.out, "webhook.jsonl"), (webhook_event(base, k) for k in range(args.count)))
    for name, events in stage_events(args.count).items():
        write(os.path.join(args.out, f"{name}.jsonl"), events)


if __name__ == "__main__":
    main()
