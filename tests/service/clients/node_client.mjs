// The aibatch service driven from Node (20+, its built-in fetch), not Python:
// submit a small ingest run, follow its Server-Sent Events to `end`, read its
// summary, score a few texts on v1 and v2. Prints one JSON report on stdout;
// exits 1 with the reason on stderr at the first unexpected answer.
//
// Run with: SERVICE_URL=http://127.0.0.1:8790 SERVICE_KEY=sk-... RUN_REQUEST='{"job": "ingest", ...}' \
//           MODEL=sentiment node tests/service/clients/node_client.mjs

const base = process.env.SERVICE_URL;
const headers = { authorization: `Bearer ${process.env.SERVICE_KEY}`, "content-type": "application/json" };

async function call(method, path, body, expected) {
  const response = await fetch(base + path, { method, headers, body: body && JSON.stringify(body) });
  const text = await response.text();
  if (response.status !== expected) {
    throw new Error(`${method} ${path}: ${response.status}, expected ${expected}: ${text}`);
  }
  return { response, body: JSON.parse(text) };
}

// Server-Sent Events as the HTML standard's EventSource reads them: fields up to a blank line.
async function* events(path) {
  const response = await fetch(base + path, { headers: { ...headers, accept: "text/event-stream" } });
  if (response.status !== 200 || !response.headers.get("content-type").startsWith("text/event-stream")) {
    throw new Error(`GET ${path}: ${response.status} ${response.headers.get("content-type")}`);
  }
  const decoder = new TextDecoder();
  let buffer = "";
  let fields = {};
  for await (const chunk of response.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if ("data" in fields) yield { id: fields.id, event: fields.event ?? "message", data: JSON.parse(fields.data) };
        fields = {};
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        fields[name] = name === "data" && "data" in fields ? `${fields.data}\n${value}` : value;
      }
    }
  }
}

async function main() {
  const submitted = await call("POST", "/api/v1/runs", JSON.parse(process.env.RUN_REQUEST), 202);
  const location = submitted.response.headers.get("location");
  const seen = [];
  let end = null;
  for await (const event of events(`${location}/events`)) {
    seen.push({ id: Number(event.id), event: event.event, state: event.data.state, elapsed_s: event.data.elapsed_s });
    if (event.event === "end") end = event.data;
  }
  if (end === null) throw new Error("the event stream closed without an end event");
  const run = (await call("GET", location, undefined, 200)).body;
  const texts = ["a wonderful, moving film", "dull and far too long", "I loved it"];
  const v1 = await call("POST", "/api/v1/score", { model: process.env.MODEL, texts }, 200);
  const v2 = await call("POST", "/api/v2/score", { model: process.env.MODEL, texts }, 200);
  const report = {
    run_id: submitted.body.id,
    location,
    events: seen,
    end: { state: end.state, counts: end.counts },
    run: { state: run.state, counts: run.counts, summary: run.summary },
    v1: { deprecation: v1.response.headers.get("deprecation"), body: v1.body },
    v2: v2.body,
  };
  process.stdout.write(JSON.stringify(report) + "\n");
}

main().catch((error) => {
  process.stderr.write(`node client: ${error.message}\n`);
  process.exit(1);
});
