// Type-checked against the stubs `make stubs` generates (stubs/ts): shows the
// generated TypeScript types describe the service. tests/test_node_client.py
// runs `tsc --noEmit --strict` on it; the runtime check is client.test.mjs.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "../../stubs/ts/compression";
import type { BatchCompressResponse__Output } from "../../stubs/ts/llmcompress/v1/BatchCompressResponse";
import type { CompressRequest } from "../../stubs/ts/llmcompress/v1/CompressRequest";

// The options `make stubs` generated the types for.
const definition = protoLoader.loadSync("llmcompress/v1/compression.proto", {
  includeDirs: ["protos"],
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;

export function roundTrip(address: string, text: string): Promise<boolean> {
  const client = new proto.llmcompress.v1.CompressionService(address, grpc.credentials.createInsecure());
  const request: CompressRequest = { text, mode: "MODE_ZSTD", verify: true };
  return new Promise((resolve, reject) => {
    client.Compress(request, (err, compressed) => {
      if (err || !compressed) return reject(err);
      const ratio: number = compressed.stats?.ratio ?? 0;
      const originalBytes: string = compressed.stats?.originalBytes ?? "0";
      console.log(`ratio ${ratio} over ${originalBytes} bytes`);
      client.Reconstruct({ envelope: compressed.envelope }, (err2, back) => {
        client.close();
        return err2 || !back ? reject(err2) : resolve(back.exact && back.text === text);
      });
    });
  });
}

export function batch(address: string, texts: Map<string, string>): Promise<Map<string, string>> {
  const client = new proto.llmcompress.v1.CompressionService(address, grpc.credentials.createInsecure());
  const outcomes = new Map<string, string>();
  return new Promise((resolve, reject) => {
    const call = client.BatchCompress();
    call.on("data", (response: BatchCompressResponse__Output) => {
      // `outcome` names the oneof member that is set: "result" or "error".
      outcomes.set(response.id, response.outcome === "result" ? "ok" : (response.error?.message ?? "?"));
    });
    call.on("error", reject);
    call.on("end", () => resolve(outcomes));
    for (const [id, text] of texts) call.write({ id, request: { text, mode: "MODE_ZSTD" } });
    call.end();
  });
}
