// A long-running token verifier built on the `jose` npm package's remote JWK Set, the way a Node service verifies
// JWTs against a jwks_uri: one createRemoteJWKSet for the process (so its cache lives as long as a service's
// would), jwtVerify for each token.
//
//   node jose_verifier.mjs --url <jwks_uri> --cache-max-age-ms N --cooldown-ms N --algorithms ES256[,RS256...]
//                          [--modules <npm prefix holding node_modules/jose>]
//
// Reads one compact JWT per line on stdin and writes one JSON object per line on stdout, in order:
//   first  {"ready": true, "jose": "<version>"}
//   then   {"ok": true, "kid": ..., "payload": {...}, "fetches": n}
//      or  {"ok": false, "kid": ..., "code": "ERR_JWKS_NO_MATCHING_KEY", "message": ..., "fetches": n}
// where `fetches` counts the JWK Set requests jose has made so far (its only HTTP traffic).
import { createRequire } from "node:module";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const { values: options } = parseArgs({
  options: {
    url: { type: "string" },
    "cache-max-age-ms": { type: "string" },
    "cooldown-ms": { type: "string" },
    algorithms: { type: "string", default: "ES256,RS256" },
    modules: { type: "string" },
  },
});
if (!options.url || options["cache-max-age-ms"] === undefined || options["cooldown-ms"] === undefined) {
  console.error("usage: jose_verifier.mjs --url URL --cache-max-age-ms N --cooldown-ms N [--algorithms A,B] "
                + "[--modules PREFIX]");
  process.exit(2);
}

// jose is installed outside the repository (an npm --prefix in the project's cache); ESM does not read NODE_PATH,
// so resolve it from that prefix through its package exports.
const require = createRequire(options.modules ? join(options.modules, "package.json") : import.meta.url);
const jose = await import(pathToFileURL(require.resolve("jose")).href);
const { version } = require("jose/package.json");

let fetches = 0;
const countingFetch = (...args) => {
  fetches += 1;
  return fetch(...args);
};
const jwks = jose.createRemoteJWKSet(new URL(options.url), {
  cacheMaxAge: Number(options["cache-max-age-ms"]),
  cooldownDuration: Number(options["cooldown-ms"]),
  [jose.customFetch]: countingFetch,
});
const algorithms = options.algorithms.split(",");

const write = (result) => process.stdout.write(`${JSON.stringify(result)}\n`);
write({ ready: true, jose: version });
for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  const token = line.trim();
  if (!token) continue;
  let kid = null;
  try {
    kid = jose.decodeProtectedHeader(token).kid ?? null;
    const { payload } = await jose.jwtVerify(token, jwks, { algorithms });
    write({ ok: true, kid, payload, fetches });
  } catch (error) {
    write({ ok: false, kid, code: error.code ?? error.name, message: String(error.message), fetches });
  }
}
