//! LiveKit webhooks: signed bodies only, exact viewer counts whatever the
//! delivery order, room_finished ends the stream.

use uuid::Uuid;

use crate::helpers::{LIVEKIT_API_SECRET, TestApp, signed_webhook, webhook_event, webhook_request};

struct Room {
    app: TestApp,
    streamer: Uuid,
}

const ROOM: &str = "webhook-room";

async fn live_room() -> Room {
    let app = TestApp::spawn().await;
    let streamer = Uuid::new_v4();
    app.start_stream(streamer, ROOM).await;
    Room { app, streamer }
}

impl Room {
    async fn send(&self, id: &str, event: &str, participant: Option<(&str, &str, bool)>) -> String {
        let body = webhook_event(id, event, ROOM, participant);
        let response = self.app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
        assert_eq!(response.status, 200, "{}", response.body);
        response.body["outcome"].as_str().unwrap().to_owned()
    }

    async fn count(&self) -> i32 {
        self.app.viewer_count(ROOM).await
    }
}

#[tokio::test]
async fn joins_and_leaves_keep_an_exact_count_of_viewers() {
    let room = live_room().await;
    let (ada, bob) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let streamer = room.streamer.to_string();
    assert_eq!(
        room.send("EV_1", "participant_joined", Some((&streamer, "PA_host", false)))
            .await,
        "applied"
    );
    assert_eq!(room.count().await, 0, "the streamer is not a viewer");
    room.send("EV_2", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    room.send("EV_3", "participant_joined", Some((&bob, "PA_bob", false)))
        .await;
    room.send(
        "EV_4",
        "participant_joined",
        Some(("egress-recorder", "PA_rec", true)),
    )
    .await;
    assert_eq!(room.count().await, 2, "hidden participants are not viewers");
    room.send("EV_5", "participant_left", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.count().await, 1);
    room.send(
        "EV_6",
        "participant_connection_aborted",
        Some((&bob, "PA_bob", false)),
    )
    .await;
    assert_eq!(room.count().await, 0);
}

#[tokio::test]
async fn a_replayed_event_id_is_applied_once() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_join", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    room.send("EV_leave", "participant_left", Some((&ada, "PA_ada", false)))
        .await;
    // LiveKit retries the join; the viewer must not come back.
    assert_eq!(
        room.send("EV_join", "participant_joined", Some((&ada, "PA_ada", false)))
            .await,
        "duplicate"
    );
    assert_eq!(room.count().await, 0);
}

#[tokio::test]
async fn a_leave_delivered_before_its_join_never_goes_negative_or_sticks() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_2", "participant_left", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.count().await, 0);
    room.send("EV_1", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.count().await, 0, "that session already left");
}

#[tokio::test]
async fn one_viewer_on_two_devices_counts_once() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_1", "participant_joined", Some((&ada, "PA_phone", false)))
        .await;
    room.send("EV_2", "participant_joined", Some((&ada, "PA_tablet", false)))
        .await;
    assert_eq!(room.count().await, 1);
    room.send("EV_3", "participant_left", Some((&ada, "PA_phone", false)))
        .await;
    assert_eq!(room.count().await, 1, "still watching on the tablet");
}

#[tokio::test]
async fn concurrent_joins_are_all_counted() {
    let room = live_room().await;
    let identities: Vec<String> = (0..20).map(|_| Uuid::new_v4().to_string()).collect();
    let deliveries = identities.iter().enumerate().map(|(i, identity)| {
        let body = webhook_event(
            &format!("EV_{i}"),
            "participant_joined",
            ROOM,
            Some((identity, &format!("PA_{i}"), false)),
        );
        room.app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET))
    });
    let statuses: Vec<u16> = futures::future::join_all(deliveries)
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(room.count().await, 20);
}

#[tokio::test]
async fn room_finished_ends_the_stream_like_end_does() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_1", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.send("EV_2", "room_finished", None).await, "applied");
    let row = room.app.stream_row(ROOM).await.unwrap();
    assert!(!row.get::<_, bool>("is_live"));
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("ended_at")
            .is_some()
    );
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_closed_at")
            .is_some()
    );
    assert_eq!(row.get::<_, i32>("viewer_count"), 0);
    let token = room.app.token_for(Uuid::new_v4());
    let late = room
        .app
        .call(
            shared::handlers::issue_token,
            Some(&token),
            &format!(r#"{{"roomName":"{ROOM}","participantName":"x"}}"#),
        )
        .await;
    late.assert_error(409, "stream_ended");
    assert!(
        room.app.livekit.calls_to("DeleteRoom").is_empty(),
        "the finished room is not deleted again"
    );
}

#[tokio::test]
async fn unknown_events_and_unknown_rooms_are_acknowledged_and_ignored() {
    let room = live_room().await;
    assert_eq!(room.send("EV_1", "track_published", None).await, "ignored");
    let body = webhook_event(
        "EV_2",
        "participant_joined",
        "some-other-room",
        Some(("x", "PA_x", false)),
    );
    let response = room.app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    assert_eq!(
        (response.status, response.body["outcome"].as_str()),
        (200, Some("ignored"))
    );
    assert_eq!(room.count().await, 0);
}

#[tokio::test]
async fn unsigned_or_tampered_webhooks_are_401_and_change_nothing() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    let body = webhook_event("EV_1", "participant_joined", ROOM, Some((&ada, "PA_ada", false)));

    let signed = signed_webhook(&body, LIVEKIT_API_SECRET);
    let authorization = signed.headers()["authorization"].to_str().unwrap().to_owned();
    // One byte of the body changed after signing: "PA_ada" becomes "PA_adb".
    let altered = body.replacen("PA_ada", "PA_adb", 1);
    assert_eq!(altered.len(), body.len());

    for request in [
        webhook_request(&altered, Some(&authorization)),
        webhook_request(&body, None),
        webhook_request(&body, Some("not-a-jwt")),
        signed_webhook(&body, "another-secret-that-livekit-did-not-use"),
    ] {
        let response = room.app.deliver(request).await;
        response.assert_error(401, "invalid_signature");
    }
    assert_eq!(room.count().await, 0);
    // The event id was not burned by the rejected deliveries.
    assert_eq!(
        room.send("EV_1", "participant_joined", Some((&ada, "PA_ada", false)))
            .await,
        "applied"
    );
    assert_eq!(room.count().await, 1);
}

#[tokio::test]
async fn a_base64_encoded_api_gateway_body_is_verified_on_its_decoded_bytes() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    let body = webhook_event("EV_1", "participant_joined", ROOM, Some((&ada, "PA_ada", false)));
    let signed = signed_webhook(&body, LIVEKIT_API_SECRET);
    let authorization = signed.headers()["authorization"].to_str().unwrap().to_owned();
    use base64::Engine;
    let event = serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /live/webhook",
        "rawPath": "/live/webhook",
        "rawQueryString": "",
        "headers": {"authorization": authorization, "content-type": "application/webhook+json"},
        "requestContext": {"http": {"method": "POST", "path": "/live/webhook", "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1", "userAgent": "Go-http-client/1.1"},
            "accountId": "123456789012", "apiId": "local", "domainName": "localhost", "domainPrefix": "localhost",
            "requestId": "webhook", "routeKey": "POST /live/webhook", "stage": "$default",
            "time": "26/Nov/2026:10:00:00 +0000", "timeEpoch": 1795687200000_i64},
        "body": base64::engine::general_purpose::STANDARD.encode(&body),
        "isBase64Encoded": true,
    });
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let response = room.app.deliver(request).await;
    assert_eq!(
        (response.status, response.body["outcome"].as_str()),
        (200, Some("applied")),
        "{}",
        response.body
    );
    assert_eq!(room.count().await, 1);
}

/// LiveKit may let a token minted before a ban or a mute join again (not every
/// server revokes tokens): the webhook enforces the database on every join.
#[tokio::test]
async fn a_banned_user_who_joins_is_removed_and_a_muted_one_muted_again() {
    let room = live_room().await;
    let host = room.app.token_for(room.streamer);
    let (banned, muted) = (Uuid::new_v4(), Uuid::new_v4());
    for (user, action) in [(banned, "ban"), (muted, "mute")] {
        let body = serde_json::json!({"roomName": ROOM, "userId": user, "action": action}).to_string();
        let response = room
            .app
            .call(shared::handlers::moderate, Some(&host), &body)
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let before = room.app.livekit.calls().len();
    // Both join with tokens from before: data publishing still allowed in them.
    room.send(
        "EV_banned",
        "participant_joined",
        Some((&banned.to_string(), "PA_banned", false)),
    )
    .await;
    room.send(
        "EV_muted",
        "participant_joined",
        Some((&muted.to_string(), "PA_muted", false)),
    )
    .await;
    let calls = &room.app.livekit.calls()[before..];
    let removed: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "RemoveParticipant")
        .map(|c| c.identity.as_str())
        .collect();
    assert_eq!(removed, vec![banned.to_string()]);
    let updated: Vec<_> = calls.iter().filter(|c| c.method == "UpdateParticipant").collect();
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].identity, muted.to_string());
    assert!(!updated[0].permission.as_ref().unwrap().can_publish_data);

    // A viewer with nothing against them, whose permission is already right: no call.
    let before = room.app.livekit.calls().len();
    room.send(
        "EV_fine",
        "participant_joined",
        Some((&Uuid::new_v4().to_string(), "PA_fine", false)),
    )
    .await;
    assert_eq!(room.app.livekit.calls().len(), before);
}

#[tokio::test]
async fn after_the_stream_ended_joins_are_removed_and_no_webhook_changes_counts() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_1", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.count().await, 1);
    let ended = room
        .app
        .call(
            shared::handlers::end_stream,
            Some(&room.app.token_for(room.streamer)),
            &format!(r#"{{"roomName":"{ROOM}"}}"#),
        )
        .await;
    assert_eq!(ended.status, 200);
    assert_eq!(room.count().await, 0, "an ended stream has no viewers");

    let late = Uuid::new_v4().to_string();
    assert_eq!(
        room.send("EV_2", "participant_joined", Some((&late, "PA_late", false)))
            .await,
        "ignored"
    );
    assert_eq!(
        room.send("EV_3", "participant_left", Some((&ada, "PA_ada", false)))
            .await,
        "ignored"
    );
    assert_eq!(room.count().await, 0);
    let removed = room.app.livekit.calls_to("RemoveParticipant");
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].identity, late);
}

/// A retried start after the empty room timed out makes a new LiveKit room
/// instance under the same name; a late `room_finished` of the previous
/// instance must not end the stream.
#[tokio::test]
async fn events_of_another_instance_of_the_room_are_ignored() {
    let room = live_room().await;
    assert_eq!(
        stored_sid(&room.app, ROOM).await.as_deref(),
        Some("RM_webhook-room")
    );
    room.app.livekit.remove_room(ROOM);
    let retried = room
        .app
        .call(
            shared::handlers::start_stream,
            Some(&room.app.token_for(room.streamer)),
            &format!(r#"{{"title":"A stream","roomName":"{ROOM}"}}"#),
        )
        .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(
        stored_sid(&room.app, ROOM).await.as_deref(),
        Some("RM_webhook-room_2")
    );

    let late = serde_json::json!({
        "id": "EV_old_finished", "event": "room_finished",
        "room": {"sid": "RM_webhook-room", "name": ROOM},
    })
    .to_string();
    let response = room.app.deliver(signed_webhook(&late, LIVEKIT_API_SECRET)).await;
    assert_eq!(response.body["outcome"], "ignored");
    assert!(room.app.stream_row(ROOM).await.unwrap().get::<_, bool>("is_live"));

    let current = late
        .replace("RM_webhook-room", "RM_webhook-room_2")
        .replace("EV_old_finished", "EV_finished");
    let response = room
        .app
        .deliver(signed_webhook(&current, LIVEKIT_API_SECRET))
        .await;
    assert_eq!(response.body["outcome"], "applied");
    assert!(!room.app.stream_row(ROOM).await.unwrap().get::<_, bool>("is_live"));
}

async fn stored_sid(app: &TestApp, room: &str) -> Option<String> {
    app.stream_row(room).await.unwrap().get("room_sid")
}
