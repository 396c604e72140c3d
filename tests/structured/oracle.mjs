// Independent oracles for tests/structured (run by the C++ tests through `node`):
//   node oracle.mjs regex IN OUT  ECMA-262 RegExp with the u flag (node's own engine):
//        IN  [{pattern, strings: [...]}]
//        OUT [{error: null | message, full: [bool], search: [bool]}]
//        full: the whole string matches (new RegExp('^(?:' + p + ')$', 'u'));
//        search: RegExp.prototype.test, as JSON Schema's "pattern" (new RegExp(p, 'u')).
//   node oracle.mjs ajv IN OUT    JSON.parse + ajv 8 (strict off, all errors) + ajv-formats:
//        IN  [{schema, texts: [...]}]
//        OUT [{error: null | message, results: [{parsed, valid, errors}]}]
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const [mode, inPath, outPath] = process.argv.slice(2);
const input = JSON.parse(readFileSync(inPath, "utf8"));
let out;
if (mode === "regex") {
  out = input.map(({ pattern, strings }) => {
    let full, search;
    try {
      full = new RegExp("^(?:" + pattern + ")$", "u");
      search = new RegExp(pattern, "u");
    } catch (e) {
      return { error: String(e.message), full: [], search: [] };
    }
    return { error: null, full: strings.map((s) => full.test(s)), search: strings.map((s) => search.test(s)) };
  });
} else if (mode === "ajv") {
  const require = createRequire(import.meta.url);
  const Ajv2020 = require("ajv/dist/2020").default;
  const addFormats = require("ajv-formats");
  out = input.map(({ schema, texts }) => {
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    addFormats(ajv);
    let validate;
    try {
      validate = ajv.compile(schema);
    } catch (e) {
      return { error: String(e.message), results: [] };
    }
    const results = texts.map((t) => {
      let v;
      try {
        v = JSON.parse(t);
      } catch (e) {
        return { parsed: false, valid: false, errors: String(e.message) };
      }
      const ok = validate(v);
      return { parsed: true, valid: ok, errors: ok ? null : ajv.errorsText(validate.errors) };
    });
    return { error: null, results };
  });
} else {
  throw new Error("mode must be regex or ajv");
}
writeFileSync(outPath, JSON.stringify(out));
