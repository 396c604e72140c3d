// XGrammar's token masks (npm @mlc-ai/web-xgrammar, XGrammar compiled to WebAssembly), an
// independent implementation of the same masks as src/structured:
//   node xgrammar_oracle.mjs IN OUT
//     IN  {vocab: [token string as tokenizer.json writes it, "" for a special token],
//          vocab_type: "byte_level" | "byte_fallback", stop: [ids],
//          cases: [{kind: "json_schema" | "regex" | "ebnf", text, walks: [[id, ...], ...]}]}
//     OUT [{error: null | message, walks: [{masks: [hex of the mask's words], refused: null | step}]}]
//   For each walk, the mask before each token and after the last one (fewer when XGrammar refuses
//   a token of the walk: `refused` is its index). A mask is XGrammar's bitmask (bit id % 32 of
//   word id / 32), word after word, each as 8 hex digits (most significant first).
//   JSON schemas compile with XGrammar's compact form (no whitespace, separators "," and ":"),
//   which is philora's JsonOptions{max_whitespace = 0}.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

// The package is a UMD bundle of emscripten output: in node it looks for CommonJS's require and
// __filename, and as an ES module it puts its exports on globalThis.xgrammar.
globalThis.require = createRequire(import.meta.url);
globalThis.__filename = fileURLToPath(import.meta.url);
await import("@mlc-ai/web-xgrammar");
const xg = globalThis.xgrammar;

const [inPath, outPath] = process.argv.slice(2);
const input = JSON.parse(readFileSync(inPath, "utf8"));
const info = await xg.TokenizerInfo.createTokenizerInfo(input.vocab, input.vocab_type, false, input.vocab.length,
                                                        input.stop);
const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
const hex = (bm) => Array.from(bm, (w) => (w >>> 0).toString(16).padStart(8, "0")).join("");

const out = [];
for (const c of input.cases) {
  let compiled;
  try {
    if (c.kind === "json_schema") {
      compiled = await compiler.compileJSONSchema(c.text, false, -1, [",", ":"], true)  // -1: no indent;
    } else if (c.kind === "regex") {
      compiled = await compiler.compileStructuralTag({ type: "structural_tag", format: { type: "regex", pattern: c.text } });
    } else if (c.kind === "ebnf") {
      compiled = await compiler.compileGrammar(c.text, "root");
    } else {
      throw new Error("unknown kind " + c.kind);
    }
  } catch (e) {
    out.push({ error: String(e.message ?? e), walks: [] });
    continue;
  }
  const walks = [];
  for (const tokens of c.walks) {
    const m = await xg.GrammarMatcher.createGrammarMatcher(compiled);
    const masks = [];
    let refused = null;
    for (let i = 0; i <= tokens.length; ++i) {
      if (m.isTerminated()) break;
      masks.push(hex(await m.getNextTokenBitmask()));
      if (i === tokens.length) break;
      if (!m.acceptToken(tokens[i])) {
        refused = i;
        break;
      }
    }
    m.dispose();
    walks.push({ masks, refused });
  }
  compiled.dispose();
  out.push({ error: null, walks });
}
writeFileSync(outPath, JSON.stringify(out));
