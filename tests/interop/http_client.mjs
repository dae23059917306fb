// The official TypeScript MCP SDK client over streamable HTTP against `tt serve`.
// Usage: node http_client.mjs URL TOKEN
// Connects with the bearer token, lists the tools, calls whoami, waits in receive (printing
// "WAITING" on stdout at its first progress notification, so the test can send it mail), then
// connects once more with a wrong token.  Prints one JSON line with what it saw.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, token] = process.argv.slice(2);

function connectAs(bearer) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${bearer}` } },
  });
  return { transport, client: new Client({ name: "tinytown-http-interop", version: "1.0.0" }) };
}

const { transport, client } = connectAs(token);
await client.connect(transport);
const tools = await client.listTools();
const whoami = await client.callTool({ name: "whoami", arguments: {} });
let progress = 0;
const received = await client.callTool(
  { name: "receive", arguments: { timeout_s: 120 } },
  CallToolResultSchema,
  {
    timeout: 60_000,
    resetTimeoutOnProgress: true,
    onprogress: () => {
      progress += 1;
      if (progress === 1) console.log("WAITING");
    },
  },
);
await transport.terminateSession();
await client.close();

let refused = null;
const wrong = connectAs("ttk_" + "x".repeat(43));
try {
  await wrong.client.connect(wrong.transport);
  refused = "connected";
} catch (error) {
  refused = { code: error.code ?? null, message: String(error) };
}

console.log(JSON.stringify({
  server: client.getServerVersion(),
  tools: tools.tools.map((t) => t.name),
  whoami: whoami.structuredContent,
  received: received.structuredContent,
  progress,
  refused,
}));
