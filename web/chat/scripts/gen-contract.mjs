// Generate src/generated/contract.ts (the WebSocket frames' TypeScript types) from
// the wire contract's JSON Schema, contract/schema/parley.schema.json, with
// json-schema-to-typescript. Run by `npm run gen` (before typecheck, build and
// tests); the output is not committed, so the types cannot drift from the schema.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { compile } from "json-schema-to-typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const schemaPath = path.resolve(here, "../../../contract/schema/parley.schema.json");
const out = path.resolve(here, "../src/generated/contract.ts");
const schema = JSON.parse(readFileSync(schemaPath, "utf8"));

// The schema is a set of $defs; make a root that names the two frame unions, so
// every frame (and what they use) gets an interface named by its title.
const root = {
  title: "ParleyContract",
  type: "object",
  properties: {
    client: { $ref: "#/$defs/ClientFrame" },
    server: { $ref: "#/$defs/ServerFrame" },
  },
  required: ["client", "server"],
  $defs: schema.$defs,
};
for (const def of Object.values(root.$defs)) delete def.discriminator; // not JSON Schema proper

const ts = await compile(root, "ParleyContract", {
  additionalProperties: false, // the gateway refuses unknown fields
  bannerComment: `/* Generated from contract/schema/parley.schema.json by scripts/gen-contract.mjs: do not edit. */`,
  declareExternallyReferenced: true,
  unreachableDefinitions: false,
  format: false,
  strictIndexSignatures: true,
});
mkdirSync(path.dirname(out), { recursive: true });
writeFileSync(out, ts);
console.log(`gen-contract: ${path.relative(process.cwd(), out)}`);
