#!/usr/bin/env node
// Fetches LiveKit credentials the way an app does: with livekit-client's own
// `TokenSource.endpoint` (LiveKit's standard token endpoint protocol), not a
// re-implementation of it.
//
//   node token-source-fetch.mjs <endpoint url>   < cases.json
//
// stdin: a JSON array of cases, each
//   { "bearer": "<Supabase access token>" | null,
//     "options": { roomName, participantName, participantIdentity, agentName, … },
//     "fetches": 1 }                // optional: fetch this many times from one TokenSource
// For each case a fresh source is built as an app would build it:
//   TokenSource.endpoint(url, { headers: { Authorization: `Bearer ${bearer}` } })
// and `fetch(options)` is called. stdout: one JSON array, per case either
//   { "ok": true, "response": <what fetch returned>, "payload": <decodeTokenPayload(token)> }
// or { "ok": false, "error": "<the SDK's error message>" }.
//
// What the SDK sends (livekit-client 2.23.0, src/room/token-source/TokenSource.ts,
// class TokenSourceEndpoint): POST (unless options.method says otherwise),
// `Content-Type: application/json` plus the given headers, and the body
// `TokenSourceRequest.toJsonString({ useProtoFieldName: true })`: snake_case
// proto field names (room_name, participant_name, participant_identity,
// participant_metadata, participant_attributes, and room_config for
// agentName/agentMetadata/deployment), unset fields left out. A non-2xx answer
// throws "Error generating token from endpoint <url>: received <status> / <body>";
// a 2xx body is read with TokenSourceResponse.fromJson (server_url, participant_token).
// Needs `npm ci` in this directory (scripts/test does it).
import { TokenSource, decodeTokenPayload } from 'livekit-client';

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function main() {
  const url = process.argv[2];
  if (!url || process.argv.length !== 3) {
    throw new Error('usage: node token-source-fetch.mjs <endpoint url>  (cases as JSON on stdin)');
  }
  const cases = JSON.parse(await readStdin());
  const results = [];
  for (const { bearer, options, fetches = 1 } of cases) {
    const source = TokenSource.endpoint(url, bearer ? { headers: { Authorization: `Bearer ${bearer}` } } : {});
    try {
      let response;
      for (let i = 0; i < fetches; i++) response = await source.fetch(options);
      results.push({ ok: true, response, payload: decodeTokenPayload(response.participantToken) });
    } catch (err) {
      results.push({ ok: false, error: String(err?.message ?? err) });
    }
  }
  process.stdout.write(JSON.stringify(results) + '\n');
}

main().catch((err) => {
  process.stderr.write(`token-source-fetch: ${err?.stack ?? err}\n`);
  process.exit(1);
});
