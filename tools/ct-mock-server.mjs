// Runs @labdigital/commercetools-mock as a local HTTP server for tests, benchmarks and the demo.
// Usage: node tools/ct-mock-server.mjs [--port N] [--host 127.0.0.1] [--project KEY]
// Prints one JSON line {"ready": true, "url": "..."} once it listens (port 0 picks a free one).
import { parseArgs } from "node:util";
import { CommercetoolsMock } from "@labdigital/commercetools-mock";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: process.env.CT_MOCK_PORT ?? "0" },
    host: { type: "string", default: "127.0.0.1" },
    project: { type: "string", default: "d365ct-demo" },
    auth: { type: "boolean", default: false },
  },
});

const mock = new CommercetoolsMock({
  strict: true,
  silent: true,
  defaultProjectKey: values.project,
  enableAuthentication: values.auth,
  validateCredentials: false,
});

const stop = async () => {
  await mock.app.close();
  process.exit(0);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

await mock.app.listen({ port: Number.parseInt(values.port, 10), host: values.host });
const address = mock.app.server.address();
console.log(JSON.stringify({ ready: true, url: `http://${values.host}:${address.port}` }));
