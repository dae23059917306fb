// The official TypeScript MCP SDK client (what Claude Code / Codex-style hosts use) against
// tinytown-mcp over stdio.  Usage: node client.mjs COMMAND [ARGS...]
// Prints one JSON object with what it saw; tests/test_mcp_interop.py checks it.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [command, ...args] = process.argv.slice(2);
const transport = new StdioClientTransport({ command, args, env: process.env, stderr: "inherit" });
const client = new Client({ name: "tinytown-interop", version: "1.0.0" });

await client.connect(transport);
const tools = await client.listTools();
const whoami = await client.callTool({ name: "whoami", arguments: {} });
const sent = await client.callTool({
  name: "send_message",
  arguments: { to: "conductor", body: "hello from TypeScript", kind: "query", priority: "high" },
});
const refused = await client.callTool({ name: "receive", arguments: { timeout_s: 999 } });
const prompt = await client.getPrompt({ name: "agent_guide" });
const inbox = await client.readResource({ uri: "tinytown://inbox" });
await client.close();

console.log(JSON.stringify({
  server: client.getServerVersion(),
  instructions: client.getInstructions(),
  tools: tools.tools.map((t) => ({ name: t.name, schema: t.inputSchema, annotations: t.annotations })),
  whoami: { isError: whoami.isError ?? false, structured: whoami.structuredContent, text: whoami.content[0].text },
  sent: { isError: sent.isError ?? false, structured: sent.structuredContent },
  refused: { isError: refused.isError ?? false, text: refused.content[0].text },
  prompt: prompt.messages[0].content.text,
  inbox: inbox.contents[0].text,
}));
