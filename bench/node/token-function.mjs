#!/usr/bin/env node
// The seed's /live/token as a Node Lambda, for scripts/bench to run under the
// same Runtime API harness as ours: jose verifies the Supabase JWT (HS256), pg
// reads the stream and the caller's restrictions in one read-only query, and
// livekit-server-sdk mints the token. The Runtime API loop is what Lambda's
// Node runtime does around a handler: GET the next event, POST the result.
//
// Environment as ours: DATABASE_URL, LIVEKIT_URL, LIVEKIT_API_KEY,
// LIVEKIT_API_SECRET, SUPABASE_JWT_SECRET, AWS_LAMBDA_RUNTIME_API.
import http from 'node:http';
import { jwtVerify } from 'jose';
import pg from 'pg';
import { AccessToken } from 'livekit-server-sdk';

const api = process.env.AWS_LAMBDA_RUNTIME_API;
const secret = new TextEncoder().encode(process.env.SUPABASE_JWT_SECRET);
// One connection per container, as ours (DatabasePoolSize 1).
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 1 });

function request(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: api.split(':')[0], port: api.split(':')[1], method, path,
      agent: keepAlive }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    if (body !== undefined) req.end(body); else req.end();
  });
}
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });

function answer(statusCode, payload) {
  return { statusCode, headers: { 'content-type': 'application/json' }, body: JSON.stringify(payload) };
}

async function handle(event) {
  const header = event.headers?.authorization ?? '';
  if (!header.startsWith('Bearer ')) return answer(401, { error: { code: 'unauthorized' } });
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(header.slice(7), secret, { audience: 'authenticated' }));
  } catch {
    return answer(401, { error: { code: 'unauthorized' } });
  }
  const { roomName, participantName } = JSON.parse(event.body ?? '{}');
  const { rows } = await pool.query(
    `SELECT s.streamer_id, s.is_live, coalesce(r.banned, false) AS banned, coalesce(r.muted, false) AS muted
     FROM live_streams s LEFT JOIN live_room_restrictions r ON r.room_name = s.id AND r.user_id = $2
     WHERE s.id = $1`, [roomName, claims.sub]);
  if (rows.length === 0) return answer(404, { error: { code: 'stream_not_found' } });
  const [stream] = rows;
  if (!stream.is_live) return answer(409, { error: { code: 'stream_ended' } });
  if (stream.banned) return answer(403, { error: { code: 'banned' } });
  const host = stream.streamer_id === claims.sub;
  const token = new AccessToken(process.env.LIVEKIT_API_KEY, process.env.LIVEKIT_API_SECRET,
    { identity: claims.sub, name: participantName, ttl: 600 });
  token.addGrant({ roomJoin: true, room: roomName, canPublish: host, canSubscribe: true,
    canPublishData: !stream.muted });
  return answer(200, { token: await token.toJwt(), serverUrl: process.env.LIVEKIT_URL });
}

for (;;) {
  const next = await request('GET', '/2018-06-01/runtime/invocation/next');
  const id = next.headers['lambda-runtime-aws-request-id'];
  let result;
  try {
    result = await handle(JSON.parse(next.body));
  } catch (error) {
    await request('POST', `/2018-06-01/runtime/invocation/${id}/error`,
      JSON.stringify({ errorMessage: String(error), errorType: 'Error' }));
    continue;
  }
  await request('POST', `/2018-06-01/runtime/invocation/${id}/response`, JSON.stringify(result));
}
