// Real API clients, unchanged, against `philora serve` on the embedded model
// (models/philora-tiny and its adapters): the `openai` SDK (v4) and
// `@huggingface/inference` (3.x, which posts TGI's {inputs, parameters,
// stream} to the URL it is given: POST /, /generate and /generate_stream here).
// Their greedy outputs must equal
// `philora generate --greedy` for the same prompts and adapters, and streamed
// deltas must concatenate to the non-streamed text.
//
//   PHILORA_BINARY=build/philora node --test tests/clients/clients.test.mjs
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import { HfInference } from "@huggingface/inference";
import { Template } from "@huggingface/jinja";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const binary = process.env.PHILORA_BINARY ?? join(root, "build/philora");
const modelDir = join(root, "models/philora-tiny");
const adapterDir = join(root, "models/adapters");
const apiKey = "client-test-key";
const maxTokens = 24;

const prompts = [
  { id: "base", prompt: "In the beginning", adapter: null },
  { id: "kjv", prompt: "And the LORD said unto", adapter: "kjv" },
  { id: "devil", prompt: "Love is", adapter: "devil" },
  { id: "jargon", prompt: "A hacker is", adapter: "jargon" },
];
const chatQuestion = "What does ocean mean?";

let server;
let baseURL;
const refs = {}; // id -> philora generate's text

// `philora generate --greedy` over `lines` (one batch), by id.
function generate(lines) {
  const dir = mkdtempSync(join(tmpdir(), "philora-clients-"));
  try {
    const file = join(dir, "requests.jsonl");
    writeFileSync(file, lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
    const args = ["generate", "--model", modelDir, "--requests", file, "--greedy",
                  "--max-new-tokens", String(maxTokens)];
    for (const a of ["kjv", "devil", "jargon"]) args.push("--adapter", `${a}=${join(adapterDir, a)}`);
    const out = execFileSync(binary, args, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
    const byId = {};
    for (const line of out.split("\n").filter(Boolean)) {
      const j = JSON.parse(line);
      byId[j.id] = j.text;
    }
    return byId;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// The chat prompt as the model's template renders it (an independent Jinja).
function chatPrompt(messages) {
  const cfg = JSON.parse(readFileSync(join(modelDir, "tokenizer_config.json"), "utf8"));
  return new Template(cfg.chat_template).render({
    messages, add_generation_prompt: true, eos_token: cfg.eos_token, bos_token: cfg.bos_token,
  });
}

before(async () => {
  Object.assign(refs, generate([
    ...prompts.map(({ id, prompt, adapter }) => ({ id, prompt, adapter })),
    { id: "chat", prompt: chatPrompt([{ role: "user", content: chatQuestion }]), adapter: null },
  ]));
  server = spawn(binary, ["serve", "--port", "0", "--device", "cpu", "--api-key", apiKey,
                          "--max-new-tokens", String(maxTokens)],
                 { stdio: ["ignore", "ignore", "pipe"] });
  baseURL = await new Promise((ok, fail) => {
    let err = "";
    const timer = setTimeout(() => fail(new Error("no ready line in 60 s:\n" + err)), 60000);
    server.stderr.on("data", (d) => {
      err += d.toString();
      const m = err.match(/ready on (http:\/\/127\.0\.0\.1:\d+) /);
      if (m) { clearTimeout(timer); ok(m[1]); }
    });
    server.on("exit", (code) => fail(new Error(`philora serve exited ${code}:\n${err}`)));
  });
});

after(async () => {
  if (!server) return;
  const exited = new Promise((ok) => server.on("exit", (code, signal) => ok({ code, signal })));
  server.kill("SIGTERM");
  const { code } = await exited;
  assert.equal(code, 0, "philora serve exits 0 on SIGTERM");
});

const openai = () => new OpenAI({ baseURL: baseURL + "/v1", apiKey, maxRetries: 0 });
const modelOf = (adapter) => adapter ?? "philora-tiny";

test("openai: completions equal philora generate, streamed deltas add up, usage", async () => {
  const client = openai();
  for (const { id, prompt, adapter } of prompts) {
    const c = await client.completions.create({
      model: modelOf(adapter), prompt, max_tokens: maxTokens, temperature: 0,
    });
    assert.equal(c.object, "text_completion");
    assert.equal(c.choices[0].text, refs[id], `${id}: the completion equals philora generate`);
    assert.equal(c.usage.completion_tokens + c.usage.prompt_tokens, c.usage.total_tokens);
    const stream = await client.completions.create({
      model: modelOf(adapter), prompt, max_tokens: maxTokens, temperature: 0, stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage = null;
    let finish = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const ch of chunk.choices) {
        text += ch.text;
        finish = ch.finish_reason ?? finish;
      }
    }
    assert.equal(text, c.choices[0].text, `${id}: streamed deltas concatenate to the text`);
    assert.equal(finish, c.choices[0].finish_reason);
    assert.deepEqual(usage, c.usage, `${id}: the last chunk's usage`);
  }
});

test("openai: chat equals philora generate on the template's prompt; streamed too", async () => {
  const client = openai();
  const messages = [{ role: "user", content: chatQuestion }];
  const r = await client.chat.completions.create({
    model: "philora-tiny", messages, max_tokens: maxTokens, temperature: 0,
  });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(r.choices[0].message.content, refs.chat);
  const stream = await client.chat.completions.create({
    model: "philora-tiny", messages, max_tokens: maxTokens, temperature: 0, stream: true,
  });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(text, r.choices[0].message.content);
});

test("openai: logprobs (completions with echo, chat with top_logprobs) and n", async () => {
  const client = openai();
  const { prompt, adapter } = prompts[0];
  const c = await client.completions.create({
    model: modelOf(adapter), prompt, max_tokens: 6, temperature: 0, logprobs: 2, echo: true,
  });
  const lp = c.choices[0].logprobs;
  assert.ok(c.choices[0].text.startsWith(prompt), "echo: the prompt comes first");
  assert.equal(lp.tokens.length, c.usage.prompt_tokens + c.usage.completion_tokens);
  assert.equal(lp.token_logprobs[0], null, "the first prompt token has no logprob");
  assert.equal(lp.top_logprobs[0], null);
  for (let i = 1; i < lp.tokens.length; ++i) {
    assert.ok(lp.token_logprobs[i] <= 0, `logprob ${i}`);
    assert.ok(Object.keys(lp.top_logprobs[i]).length >= 1);
    assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
  }
  // Greedy: each generated token is the most likely one.
  for (let i = c.usage.prompt_tokens; i < lp.tokens.length; ++i) {
    const best = Math.max(...Object.values(lp.top_logprobs[i]));
    assert.ok(Math.abs(lp.token_logprobs[i] - best) < 1e-6, `token ${i} is the top one`);
  }
  const r = await client.chat.completions.create({
    model: "philora-tiny", messages: [{ role: "user", content: chatQuestion }], max_tokens: 6,
    temperature: 0, logprobs: true, top_logprobs: 3,
  });
  const content = r.choices[0].logprobs.content;
  assert.ok(content.length >= 1 && content.length <= 6);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 3);
    assert.equal(Buffer.from(t.bytes).toString("utf8"), t.token);
    assert.ok(Math.abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6, "greedy: the top token");
  }
  // n: choice i is the request seeded seed + i.
  const many = await client.completions.create({
    model: "philora-tiny", prompt, max_tokens: 8, temperature: 1, seed: 5, n: 3,
  });
  assert.deepEqual(many.choices.map((ch) => ch.index), [0, 1, 2]);
  for (let i = 0; i < 3; ++i) {
    const one = await client.completions.create({
      model: "philora-tiny", prompt, max_tokens: 8, temperature: 1, seed: 5 + i,
    });
    assert.equal(many.choices[i].text, one.choices[0].text, `choice ${i}`);
  }
});

test("openai: the models list, and errors as the SDK's error classes", async () => {
  const client = openai();
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids.sort(), ["devil", "jargon", "kjv", "philora-tiny"]);
  await assert.rejects(
    client.completions.create({ model: "gpt-4", prompt: "x", max_tokens: 2 }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found");
  await assert.rejects(
    client.completions.create({ model: "philora-tiny", prompt: "x", n: 2, best_of: 1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "best_of");
  await assert.rejects(
    client.completions.create({ model: "philora-tiny", prompt: "x", logprobs: 21 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "logprobs");
  await assert.rejects(
    client.chat.completions.create({
      model: "philora-tiny", messages: [{ role: "user", content: "x" }],
      tools: [{ type: "function", function: { name: "f", parameters: {} } }],
    }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "tools");
  await assert.rejects(
    client.completions.create({ model: "philora-tiny", prompt: "x".repeat(20000), max_tokens: 2 }),
    (e) => e instanceof OpenAI.BadRequestError && e.code === "context_length_exceeded");
  const wrongKey = new OpenAI({ baseURL: baseURL + "/v1", apiKey: "nope", maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), (e) => e instanceof OpenAI.AuthenticationError);
});

// @huggingface/inference 3.x posts to the endpointUrl it is given, unchanged
// (HFInferenceTask.makeUrl): textGeneration {inputs, parameters},
// textGenerationStream the same with stream: true.
async function checkTextGeneration(hf, generateUrl, streamUrl) {
  for (const { id, prompt, adapter } of prompts) {
    const parameters = { max_new_tokens: maxTokens, details: true };
    if (adapter) parameters.adapter_id = adapter;
    const r = await hf.textGeneration({ endpointUrl: generateUrl, inputs: prompt, parameters });
    assert.equal(r.generated_text, refs[id], `${id} (${generateUrl}): textGeneration equals philora generate`);
    let text = "";
    let final = null;
    let tokens = 0;
    for await (const ev of hf.textGenerationStream({ endpointUrl: streamUrl, inputs: prompt, parameters })) {
      text += ev.token.text;
      tokens += 1;
      if (ev.generated_text !== null) final = ev;
    }
    assert.equal(text, r.generated_text, `${id} (${streamUrl}): the streamed tokens' text adds up`);
    assert.equal(final.generated_text, r.generated_text);
    assert.equal(final.details.generated_tokens, tokens);
  }
}

test("@huggingface/inference: textGeneration and textGenerationStream equal philora generate", async () => {
  const hf = new HfInference(apiKey);
  await checkTextGeneration(hf, baseURL, baseURL); // POST / (stream in the body)
  // A refused parameter is an error the client raises, naming it.
  await assert.rejects(
    hf.textGeneration({ endpointUrl: baseURL, inputs: "x", parameters: { watermark: true } }),
    /watermark/);
});

test("@huggingface/inference: the same on /generate and /generate_stream", async () => {
  const hf = new HfInference(apiKey);
  await checkTextGeneration(hf, `${baseURL}/generate`, `${baseURL}/generate_stream`);
  // The client posts to the URL as given: a route that does not exist is a 404.
  await assert.rejects(
    hf.textGeneration({ endpointUrl: `${baseURL}/generate_nope`, inputs: "x" }), /no such route/);
  await assert.rejects(
    hf.textGeneration({ endpointUrl: `${baseURL}/generate`, inputs: "x", parameters: { watermark: true } }),
    /watermark/);
  await assert.rejects(
    hf.textGenerationStream({ endpointUrl: `${baseURL}/generate_stream`, inputs: "x",
                              parameters: { watermark: true } }).next(),
    /watermark/);
});
