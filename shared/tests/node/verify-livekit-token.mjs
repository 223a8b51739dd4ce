#!/usr/bin/env node
// Independent check of a LiveKit access token with LiveKit's own server SDK.
//
//   node verify-livekit-token.mjs <apiKey> <apiSecret> < token.jwt
//
// Reads one JWT from stdin (surrounding whitespace ignored), verifies the
// HS256 signature with apiSecret, that `iss` equals apiKey, that `exp` is
// present and not past, then prints the claims as one JSON line on stdout.
// On any failure: message on stderr, exit status 1.
// Needs `npm ci` in this directory (scripts/test does it).
import { TokenVerifier } from 'livekit-server-sdk';

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8').trim();
}

async function main() {
  const [apiKey, apiSecret] = process.argv.slice(2);
  if (!apiKey || !apiSecret || process.argv.length !== 4) {
    throw new Error('usage: node verify-livekit-token.mjs <apiKey> <apiSecret>  (JWT on stdin)');
  }
  const token = await readStdin();
  if (!token) throw new Error('no token on stdin');
  const claims = await new TokenVerifier(apiKey, apiSecret).verify(token);
  process.stdout.write(JSON.stringify(claims) + '\n');
}

main().catch((err) => {
  process.stderr.write(`verify-livekit-token: ${err?.message ?? err}\n`);
  process.exit(1);
});
