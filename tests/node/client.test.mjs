// The polyglot check: a Node.js client built from protos/ alone (@grpc/grpc-js +
// @grpc/proto-loader) against a running server at $LLMC_SERVER.
// Run by tests/test_node_client.py, which starts the real server.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const address = process.env.LLMC_SERVER;
const deadline = () => new Date(Date.now() + 30_000);

let client;

before(() => {
  assert.ok(address, "set LLMC_SERVER to a running server's host:port");
  const definition = protoLoader.loadSync("llmcompress/v1/compression.proto", {
    includeDirs: [path.join(here, "..", "..", "protos")],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(definition);
  client = new pkg.llmcompress.v1.CompressionService(address, grpc.credentials.createInsecure());
});

after(() => client?.close());

const unary = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response),
    ),
  );

test("Compress then Reconstruct gives the text back exactly", async () => {
  const text = "Node.js says hello to llmcompress — naïve café 東京 🚀\n".repeat(20);
  const compressed = await unary("Compress", { text, mode: "MODE_ZSTD" });
  const original = Buffer.byteLength(text, "utf8");
  assert.equal(compressed.stats.mode, "MODE_ZSTD");
  assert.equal(Number(compressed.stats.original_bytes), original);
  assert.equal(Number(compressed.stats.compressed_bytes), compressed.envelope.length);
  assert.ok(Math.abs(compressed.stats.ratio - original / compressed.envelope.length) < 1e-9);

  const back = await unary("Reconstruct", { envelope: compressed.envelope });
  assert.equal(back.text, text);
  assert.equal(back.exact, true);
  assert.equal(back.mode, "MODE_ZSTD");
});

test("a bad request is INVALID_ARGUMENT with a message", async () => {
  await assert.rejects(unary("Compress", { text: "x", mode: "MODE_ZSTD", target_ratio: 0.5 }), (err) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /target_ratio/);
    return true;
  });
});

test("BatchCompress of 100 items answers every id exactly once", async () => {
  const texts = new Map();
  for (let i = 0; i < 100; i++) {
    texts.set(`node-${i}`, `item ${i}: ${"the quick brown fox jumps over the lazy dog ".repeat(1 + (i % 7))}`);
  }
  const answers = new Map();
  await new Promise((resolve, reject) => {
    const call = client.BatchCompress({ deadline: deadline() });
    call.on("data", (response) => {
      assert.ok(!answers.has(response.id), `id ${response.id} answered twice`);
      answers.set(response.id, response);
    });
    call.on("error", reject);
    call.on("end", resolve);
    for (const [id, text] of texts) {
      call.write({ id, request: { text, mode: "MODE_ZSTD" } });
    }
    call.end();
  });

  assert.deepEqual([...answers.keys()].sort(), [...texts.keys()].sort());
  for (const [id, response] of answers) {
    assert.equal(response.outcome, "result", `${id}: ${JSON.stringify(response.error)}`);
    assert.equal(Number(response.result.stats.original_bytes), Buffer.byteLength(texts.get(id)));
  }
  // Every envelope reconstructs to its own text.
  for (const id of ["node-0", "node-42", "node-99"]) {
    const back = await unary("Reconstruct", { envelope: answers.get(id).result.envelope });
    assert.equal(back.text, texts.get(id));
  }
});
