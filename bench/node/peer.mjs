// Peer benchmark: the seed design's Node stack doing the work of our hot paths.
//
//   node bench/node/peer.mjs target/bench/jwts.json
//
// The input file is written by the Rust criterion bench (`cargo bench -p shared`),
// so both sides mint the same LiveKit token and verify the same Supabase JWTs.
// Prints one JSON line:
//   {"mint_ns":…,"verify_hs256_ns":…,"verify_es256_ns":…,"verify_hs256_cryptokey_ns":…,
//    "node":…,"livekit_server_sdk":…,"jose":…}
// Each figure is the median, over BATCHES batches, of the mean ns per operation
// within a batch (process.hrtime.bigint()), after a warm-up that lets V8 tier up.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { AccessToken } from "livekit-server-sdk";
import * as jose from "jose";

const BATCHES = 30;
const WARMUP_NS = 1_000_000_000n; // 1 s per operation: enough for V8's optimizing tier
const BATCH_TARGET_NS = 50_000_000n; // each batch runs ~50 ms, far above timer resolution

const path = process.argv[2];
if (!path) {
  console.error("usage: node peer.mjs <jwts.json>");
  process.exit(2);
}
const input = JSON.parse(readFileSync(path, "utf8"));

// Minting exactly as the backend does for a viewer (shared/src/livekit/mod.rs):
// identity = user id, display name, TTL, the stage attributes that are true
// (none for this viewer), and every grant written out.
async function mint() {
  const at = new AccessToken(input.livekit_api_key, input.livekit_api_secret, {
    identity: input.identity,
    name: input.name,
    ttl: input.ttl_seconds,
    attributes: input.attributes,
  });
  at.addGrant({
    roomJoin: true,
    room: input.room,
    canPublish: false,
    canSubscribe: true,
    canPublishData: true,
    canUpdateOwnMetadata: false,
  });
  return at.toJwt();
}

const hsKey = new TextEncoder().encode(input.hs256_secret);
// The same secret imported once as a WebCrypto key. jose 6 is WebCrypto-only and
// imports raw secret bytes on every call; this variant shows the best case a Node
// service could reach (reported as an extra figure, not used for the ratio).
const hsCryptoKey = await crypto.subtle.importKey(
  "raw",
  hsKey,
  { name: "HMAC", hash: "SHA-256" },
  false,
  ["verify"],
);
// Imported once, as a long-lived process would cache the JWKS key.
const esKey = await jose.importJWK(input.es256_public_jwk, "ES256");
const hsOptions = { algorithms: ["HS256"], audience: input.audience, issuer: input.issuer };
const esOptions = { algorithms: ["ES256"], audience: input.audience, issuer: input.issuer };

const verifyHs256 = () => jose.jwtVerify(input.hs256_token, hsKey, hsOptions);
const verifyHs256CryptoKey = () => jose.jwtVerify(input.hs256_token, hsCryptoKey, hsOptions);
const verifyEs256 = () => jose.jwtVerify(input.es256_token, esKey, esOptions);

// Fail loudly rather than time an operation that throws.
async function sanityCheck() {
  const token = await mint();
  if (typeof token !== "string" || token.split(".").length !== 3) {
    throw new Error(`mint returned ${token}`);
  }
  for (const [name, verify] of [
    ["HS256", verifyHs256],
    ["HS256 (imported key)", verifyHs256CryptoKey],
    ["ES256", verifyEs256],
  ]) {
    const { payload } = await verify();
    if (payload.aud !== input.audience && !payload.aud?.includes?.(input.audience)) {
      throw new Error(`${name}: unexpected aud ${payload.aud}`);
    }
  }
}

async function runBatch(op, n) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    await op();
  }
  return process.hrtime.bigint() - start;
}

// Median ns per operation over BATCHES batches sized to ~BATCH_TARGET_NS each.
async function measure(op) {
  let ops = 0;
  let elapsed = 0n;
  while (elapsed < WARMUP_NS) {
    elapsed += await runBatch(op, 100);
    ops += 100;
  }
  const perOp = Number(elapsed) / ops;
  const batchSize = Math.max(1, Math.round(Number(BATCH_TARGET_NS) / perOp));
  const samples = [];
  for (let b = 0; b < BATCHES; b++) {
    samples.push(Number(await runBatch(op, batchSize)) / batchSize);
  }
  samples.sort((a, b) => a - b);
  const mid = samples.length >> 1;
  const median = samples.length % 2 ? samples[mid] : (samples[mid - 1] + samples[mid]) / 2;
  return Math.round(median);
}

function packageVersion(name) {
  // Read the installed package's own package.json: `exports` may not expose it.
  const here = dirname(fileURLToPath(import.meta.url));
  return JSON.parse(readFileSync(join(here, "node_modules", name, "package.json"), "utf8")).version;
}

await sanityCheck();
const result = {
  mint_ns: await measure(mint),
  verify_hs256_ns: await measure(verifyHs256),
  verify_es256_ns: await measure(verifyEs256),
  verify_hs256_cryptokey_ns: await measure(verifyHs256CryptoKey),
  node: process.version,
  livekit_server_sdk: packageVersion("livekit-server-sdk"),
  jose: packageVersion("jose"),
};
console.log(JSON.stringify(result));
