"""scripts/demo's body: the product end to end against a running scripts/dev.

Each participant is the tests' client (shared/tests/clients/participant.py),
a process of LiveKit's Python SDK driven with JSON lines.
"""

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(ROOT, "shared", "tests", "clients", "participant.py")
API = os.environ["API"]
ROOM = f"demo-{int(time.time())}"
SETTLE = 30.0
# What did not happen as the product says it should; the demo exits non-zero
# when this is not empty, so a broken step is never a "demo finished".
PROBLEMS = []


def check(ok, what):
    """Records `what` as a problem unless `ok`; returns `ok`."""
    if not ok:
        PROBLEMS.append(what)
    return ok


def outcome(event):
    return event["event"] if event else "no answer"


def step(text):
    print(f"\n==> {text}", flush=True)


def call(method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(API + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def viewer_count(token):
    status, body = call("GET", f"/live/streams/{ROOM}", token)
    return body.get("stream", {}).get("viewerCount") if status == 200 else None


async def wait_count(token, expected):
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        count = viewer_count(token)
        if count == expected:
            return count
        await asyncio.sleep(0.25)
    return viewer_count(token)


async def show_count(token, expected):
    """The count the API reports once it settles on `expected` (or after SETTLE)."""
    count = await wait_count(token, expected)
    print(f"    viewer count: {count}" + ("" if count == expected else f" (expected {expected})"))
    check(count == expected, f"viewer count {count}, expected {expected}")


class Client:
    def __init__(self, name):
        self.name = name
        self.events = []
        self.changed = asyncio.Event()

    async def start(self, url, token):
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, CLIENT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        asyncio.ensure_future(self.read())
        await self.send({"cmd": "connect", "url": url, "token": token})
        return await self.wait(lambda e: e["event"] in ("connected", "connect_failed"))

    async def read(self):
        while line := await self.process.stdout.readline():
            self.events.append(json.loads(line))
            self.changed.set()

    async def send(self, command):
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def wait(self, wanted, limit=SETTLE):
        deadline = time.monotonic() + limit
        while True:
            for event in self.events:
                if wanted(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                return None

    async def stop(self):
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def show(name, status, body):
    print(f"    {name}: {status} {json.dumps(body)[:160]}")


async def main():
    host_token, ada_token, bob_token = (os.environ[n] for n in ("HOST_TOKEN", "ADA_TOKEN", "BOB_TOKEN"))
    ada_id, bob_id = "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"
    clients = []
    try:
        step(f"the host goes live in {ROOM} and publishes a test pattern and a tone")
        status, started = call("POST", "/live/start", host_token, {"title": "Demo stream", "roomName": ROOM})
        show("POST /live/start", status, started.get("stream", started))
        if status != 201:
            sys.exit("the start failed; is scripts/dev running with LiveKit?")
        host = Client("host")
        clients.append(host)
        connected = await host.start(started["serverUrl"], started["token"])
        print(f"    host: {outcome(connected)}")
        if outcome(connected) != "connected":
            sys.exit(f"the host could not join the room: {connected}")
        await host.send({"cmd": "publish_tracks"})
        published = await host.wait(lambda e: e["event"] in ("published", "publish_failed"))
        print(f"    host: {outcome(published)}")
        check(outcome(published) == "published", "the host could not publish")
        await show_count(host_token, 0)

        step("two viewers join with tokens from /live/token and receive the host's media")
        viewers = {}
        for name, token in (("ada", ada_token), ("bob", bob_token)):
            status, joined = call("POST", "/live/token", token, {"roomName": ROOM, "participantName": name.title()})
            if status != 200:
                sys.exit(f"POST /live/token for {name} answered {status}: {joined}")
            client = Client(name)
            clients.append(client)
            connected = await client.start(joined["serverUrl"], joined["token"])
            print(f"    {name}: token {status}, {outcome(connected)}")
            if outcome(connected) != "connected":
                sys.exit(f"{name} could not join the room: {connected}")
            viewers[name] = client
        for name, client in viewers.items():
            for kind in ("video", "audio"):
                got = await client.wait(lambda e, k=kind: e["event"] == "media_received" and e["kind"] == k)
                print(f"    {name}: {kind} {'received' if got else 'NOT received'}")
                check(got, f"{name} did not receive the host's {kind}")
        await show_count(host_token, 2)

        step("ada chats through the API; everyone gets it from the server (no sender)")
        status, posted = call("POST", "/live/chat", ada_token, {"roomName": ROOM, "text": "Hello from Ada!"})
        show("POST /live/chat", status, posted)
        for client in [host, *viewers.values()]:
            got = await client.wait(lambda e: e["event"] == "data_received" and e["topic"] == "chat")
            sender = got and (got["participant"] or "the server")
            print(f"    {client.name}: {'got it from ' + sender if got else 'nothing'}")
            check(got and not got["participant"], f"{client.name} did not get the chat message from the server")
        await show_count(host_token, 2)

        step("the host sees who is watching (the viewer list) and the raised hands")
        status, listed = call("GET", f"/live/streams/{ROOM}/viewers", host_token)
        show(f"GET /live/streams/{ROOM}/viewers", status, listed)
        watching = {v["userId"] for v in (listed.get("viewers") or [])}
        check(status == 200 and {ada_id, bob_id} <= watching, f"the viewer list answered {status} without both viewers")
        status, raised = call("POST", "/live/stage/hand", ada_token, {"roomName": ROOM, "raised": True})
        show("POST /live/stage/hand as ada", status, raised)
        check(status == 200 and raised.get("handRaised"), f"ada's raised hand answered {status}")
        status, stage = call("GET", f"/live/stage?roomName={ROOM}", host_token)
        show("GET /live/stage", status, {"hands": [h["displayName"] for h in stage.get("hands", [])]})
        check(status == 200 and ada_id in {h["userId"] for h in stage.get("hands", [])}, "ada's hand is not on the stage list")
        await show_count(host_token, 2)

        step("the host invites ada on stage; she accepts and publishes; the host receives her")
        show("POST /live/stage/invite", *call("POST", "/live/stage/invite", host_token, {"roomName": ROOM, "userId": ada_id}))
        show("POST /live/stage/accept as ada", *call("POST", "/live/stage/accept", ada_token, {"roomName": ROOM}))
        allowed = await viewers["ada"].wait(lambda e: e["event"] == "permissions_changed" and e["can_publish"])
        print(f"    ada: canPublish {'on' if allowed else 'unchanged'}")
        check(allowed, "accepting the stage did not let ada publish")
        await viewers["ada"].send({"cmd": "publish_tracks"})
        published = await viewers["ada"].wait(lambda e: e["event"] in ("published", "publish_failed"))
        print(f"    ada: {outcome(published)}")
        check(outcome(published) == "published", "ada could not publish on stage")
        for kind in ("video", "audio"):
            got = await host.wait(lambda e, k=kind: e["event"] == "media_received" and e["kind"] == k and e["participant"] == ada_id)
            print(f"    host: ada's {kind} {'received' if got else 'NOT received'}")
            check(got, f"the host did not receive ada's {kind}")
        await show_count(host_token, 2)  # a guest on stage is still a viewer

        step("ada and bob tap reactions; the room gets them aggregated, a packet at most every 250 ms")
        taps = 0
        for _ in range(4):
            for token in (ada_token, bob_token):
                status, _ = call("POST", "/live/reactions", token, {"roomName": ROOM, "kind": "heart"})
                taps += status == 200
        status, _ = call("POST", "/live/reactions", bob_token, {"roomName": ROOM, "kind": "fire"})
        taps += status == 200
        got = await host.wait(lambda e: e["event"] == "data_received" and e["topic"] == "reactions"
                              and sum(json.loads(e["payload"])["totals"].values()) == taps, limit=5)
        packets = [e for e in host.events if e["event"] == "data_received" and e["topic"] == "reactions"]
        totals = json.loads(got["payload"])["totals"] if got else None
        print(f"    host: {len(packets)} packets for {taps} taps, totals {totals}")
        check(got, f"the reaction packets never added up to the {taps} taps")
        await show_count(host_token, 2)

        step("the host takes ada off the stage: LiveKit stops her tracks")
        show("POST /live/stage/remove", *call("POST", "/live/stage/remove", host_token, {"roomName": ROOM, "userId": ada_id}))
        stopped = await host.wait(lambda e: e["event"] == "track_unsubscribed" and e["participant"] == ada_id)
        print(f"    host: ada's tracks {'stopped' if stopped else 'still arriving'}")
        check(stopped, "ada's tracks kept arriving after she left the stage")
        await show_count(host_token, 2)

        step("the host mutes ada: her chat is refused and her data permission taken away")
        show("POST /live/moderation mute", *call("POST", "/live/moderation", host_token,
                                                {"roomName": ROOM, "userId": ada_id, "action": "mute"}))
        changed = await viewers["ada"].wait(lambda e: e["event"] == "permissions_changed" and not e["can_publish_data"])
        print(f"    ada: canPublishData {'off' if changed else 'unchanged'}")
        check(changed, "the mute did not take ada's data permission")
        status, refused = call("POST", "/live/chat", ada_token, {"roomName": ROOM, "text": "still here?"})
        show("POST /live/chat as ada", status, refused)
        check(status == 403, f"a muted viewer's chat answered {status}, not 403")
        await show_count(host_token, 2)

        step("the host bans bob: he is removed, and refused a new token")
        show("POST /live/moderation ban", *call("POST", "/live/moderation", host_token,
                                               {"roomName": ROOM, "userId": bob_id, "action": "ban"}))
        gone = await viewers["bob"].wait(lambda e: e["event"] == "disconnected")
        print(f"    bob: {'disconnected (' + gone['reason'] + ')' if gone else 'still connected'}")
        check(gone, "the ban did not disconnect bob")
        status, refused = call("POST", "/live/token", bob_token, {"roomName": ROOM, "participantName": "Bob"})
        show("POST /live/token as bob", status, refused)
        check(status == 403, f"a banned viewer's token request answered {status}, not 403")
        await show_count(host_token, 1)

        step("the host ends the stream: the room is deleted and everyone disconnected")
        status, ended = call("POST", "/live/end", host_token, {"roomName": ROOM})
        show("POST /live/end", status, ended)
        check(status == 200, f"/live/end answered {status}")
        for client in (host, viewers["ada"]):
            gone = await client.wait(lambda e: e["event"] == "disconnected")
            print(f"    {client.name}: {'disconnected (' + gone['reason'] + ')' if gone else 'still connected'}")
            check(gone, f"{client.name} stayed connected after the end")
        status, stream = call("GET", f"/live/streams/{ROOM}", host_token)
        show(f"GET /live/streams/{ROOM}", status, stream)
        await show_count(host_token, 0)
        status, stats = call("GET", f"/live/streams/{ROOM}/stats", host_token)
        print(f"    GET /live/streams/{ROOM}/stats: {status}")
        check(status == 200, f"the stream's stats answered {status}")
        for name, value in stats.get("stats", {}).items():
            print(f"      {name}: {value}")
        if PROBLEMS:
            print("\ndemo finished with problems:")
            for problem in PROBLEMS:
                print(f"  - {problem}")
            sys.exit(1)
        print("\ndemo finished: every step did what the API says")
    finally:
        for client in clients:
            await client.stop()


asyncio.run(main())
