"""A real LiveKit participant for the tests, on LiveKit's own Python SDK.

Driven over stdin/stdout with one JSON object per line, so a Rust test can
play a host's phone or a viewer's:

  commands (stdin)                                   answers and events (stdout)
  {"cmd": "connect", "url": ..., "token": ...}       {"event": "connected", "identity", "sid"}
                                                     {"event": "connect_failed", "error"}
    with "publish_only": NAME, a publish-only side connection of the token's
    identity, as LiveKit admits one (`/rtc?publish=NAME`, identity `<identity>#NAME`)
  {"cmd": "publish_tracks"}                          {"event": "published"} | {"event": "publish_failed", "error"}
  {"cmd": "publish_data", "topic", "payload"}        {"event": "data_sent"} | {"event": "data_failed", "error"}
  {"cmd": "participants", "id"}                      {"event": "participants", "id", "attributes": {identity: {…}}}
  {"cmd": "set_attributes", "attributes": {…}}        {"event": "attributes_sent"} | {"event": "attributes_failed", "error"}
  {"cmd": "disconnect"}                              {"event": "left"}
  {"cmd": "exit"}

and, whenever they happen: track_subscribed, media_received (the first
decoded frame of a subscribed track), track_unsubscribed, data_received (with
the sending participant's identity, or null for the server), participant_connected,
participant_disconnected, permissions_changed, attributes_changed (any
participant's, with all their attributes), disconnected (with LiveKit's reason).

Killing the process is a phone that loses its network: no clean leave.
"""

import asyncio
import json
import math
import sys

from livekit import rtc

WIDTH, HEIGHT, FPS = 160, 120, 15
SAMPLE_RATE, CHANNELS, SAMPLES_PER_FRAME = 48000, 1, 480


def emit(event, **fields):
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def kind_name(track):
    return "video" if track.kind == rtc.TrackKind.KIND_VIDEO else "audio"


class Participant:
    def __init__(self):
        self.room = rtc.Room()
        self.tasks = []
        room = self.room

        @room.on("track_subscribed")
        def on_track_subscribed(track, publication, participant):
            emit("track_subscribed", kind=kind_name(track), participant=participant.identity)
            self.tasks.append(asyncio.ensure_future(self.first_frame(track, participant.identity)))

        @room.on("track_unsubscribed")
        def on_track_unsubscribed(track, publication, participant):
            emit("track_unsubscribed", kind=kind_name(track), participant=participant.identity)

        @room.on("data_received")
        def on_data(packet):
            # The SDK gives the sender as a participant object: None for the
            # server's packets, and also for a participant this client has
            # not learned of yet (see the README's rule for chat packets).
            emit(
                "data_received",
                topic=packet.topic,
                payload=packet.data.decode("utf-8", errors="replace"),
                participant=packet.participant.identity if packet.participant is not None else None,
                reliable=packet.kind == rtc.DataPacketKind.KIND_RELIABLE,
            )

        @room.on("participant_connected")
        def on_participant_connected(participant):
            emit("participant_connected", identity=participant.identity)

        @room.on("participant_disconnected")
        def on_participant_disconnected(participant):
            emit("participant_disconnected", identity=participant.identity)

        @room.on("participant_attributes_changed")
        def on_attributes(changed, participant):
            # Every client draws the stage from these (set by the backend only).
            emit("attributes_changed", identity=participant.identity, attributes=dict(participant.attributes))

        @room.on("participant_permissions_changed")
        def on_permissions(participant, permissions):
            if participant.identity == room.local_participant.identity:
                emit(
                    "permissions_changed",
                    can_publish=permissions.can_publish,
                    can_publish_data=permissions.can_publish_data,
                )

        @room.on("disconnected")
        def on_disconnected(reason):
            emit("disconnected", reason=rtc.DisconnectReason.Name(reason) if isinstance(reason, int) else str(reason))

    async def first_frame(self, track, identity):
        stream = rtc.VideoStream(track) if track.kind == rtc.TrackKind.KIND_VIDEO else rtc.AudioStream(track)
        async for _ in stream:
            emit("media_received", kind=kind_name(track), participant=identity)
            break
        await stream.aclose()

    async def connect(self, url, token, publish_only=None):
        options = rtc.RoomOptions(auto_subscribe=True)
        if publish_only is not None:
            # LiveKit reads `publish` on its first signalling path only, the
            # one a client that does not ask for a single peer connection uses.
            url = f"{url}?publish={publish_only}"
            options = rtc.RoomOptions(auto_subscribe=False, single_peer_connection=False)
        try:
            await self.room.connect(url, token, options=options)
        except Exception as error:  # the SDK raises ConnectError and others
            emit("connect_failed", error=str(error))
            return
        emit("connected", identity=self.room.local_participant.identity, sid=self.room.local_participant.sid)

    async def publish_tracks(self):
        try:
            video = rtc.VideoSource(WIDTH, HEIGHT)
            audio = rtc.AudioSource(SAMPLE_RATE, CHANNELS)
            local = self.room.local_participant
            await local.publish_track(
                rtc.LocalVideoTrack.create_video_track("test-pattern", video),
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA),
            )
            await local.publish_track(
                rtc.LocalAudioTrack.create_audio_track("tone", audio),
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
            )
        except Exception as error:
            emit("publish_failed", error=str(error))
            return
        self.tasks.append(asyncio.ensure_future(self.test_pattern(video)))
        self.tasks.append(asyncio.ensure_future(self.tone(audio)))
        emit("published")

    async def test_pattern(self, source):
        frame_number = 0
        while True:
            shade = (frame_number * 8) % 256
            pixels = bytes([shade, 255 - shade, 128, 255]) * (WIDTH * HEIGHT)
            source.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, pixels))
            frame_number += 1
            await asyncio.sleep(1 / FPS)

    async def tone(self, source):
        sample = 0
        while True:
            frame = rtc.AudioFrame.create(SAMPLE_RATE, CHANNELS, SAMPLES_PER_FRAME)
            data = frame.data
            for i in range(SAMPLES_PER_FRAME):
                data[i] = int(8000 * math.sin(2 * math.pi * 440 * (sample + i) / SAMPLE_RATE))
            sample += SAMPLES_PER_FRAME
            await source.capture_frame(frame)

    async def publish_data(self, topic, payload):
        try:
            await self.room.local_participant.publish_data(payload, reliable=True, topic=topic)
        except Exception as error:
            emit("data_failed", error=str(error))
            return
        emit("data_sent")

    async def set_attributes(self, attributes):
        # The SDK returns once the server has answered the request (or it
        # timed out); whether it applied it is for the server's view to say.
        try:
            await self.room.local_participant.set_attributes(attributes)
        except Exception as error:
            emit("attributes_failed", error=str(error))
            return
        emit("attributes_sent")

    async def disconnect(self):
        await self.room.disconnect()
        emit("left")


async def main():
    participant = Participant()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        name = command.get("cmd")
        if name == "connect":
            await participant.connect(command["url"], command["token"], command.get("publish_only"))
        elif name == "publish_tracks":
            await participant.publish_tracks()
        elif name == "publish_data":
            await participant.publish_data(command["topic"], command["payload"])
        elif name == "participants":
            emit(
                "participants",
                id=command.get("id"),
                attributes={p.identity: dict(p.attributes) for p in participant.room.remote_participants.values()},
            )
        elif name == "set_attributes":
            await participant.set_attributes(command["attributes"])
        elif name == "disconnect":
            await participant.disconnect()
        elif name == "exit":
            break
        else:
            emit("error", error=f"unknown command {name!r}")
    for task in participant.tasks:
        task.cancel()
    await participant.room.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
