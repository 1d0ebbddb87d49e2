// Starts the Node reference Durable Streams server (@durable-streams/server) for
// side-by-side tests and benchmarks.
//
//   node reference_server.mjs [--port N] [--host H] [--data-dir DIR]
//                             [--long-poll-timeout-ms N] [--webhooks]
//
// --port 0 (the default) picks any free port. With --data-dir the server uses its
// file-backed durable store (LMDB + append-only logs), otherwise it is in-memory.
// Prints exactly one line "listening on http://HOST:PORT" to stderr when ready and
// exits with status 0 on SIGTERM or SIGINT.
import { parseArgs } from "node:util"
import { DurableStreamTestServer } from "@durable-streams/server"

const { values } = parseArgs({
  options: {
    port: { type: `string`, default: `0` },
    host: { type: `string`, default: `127.0.0.1` },
    "data-dir": { type: `string` },
    "long-poll-timeout-ms": { type: `string`, default: `500` },
    webhooks: { type: `boolean`, default: false },
  },
  strict: true,
})

function toInt(name, text) {
  const n = Number(text)
  if (!Number.isInteger(n) || n < 0) {
    console.error(`reference_server: --${name} must be a non-negative integer, got ${text}`)
    process.exit(2)
  }
  return n
}

const options = {
  host: values.host,
  port: toInt(`port`, values.port),
  longPollTimeout: toInt(`long-poll-timeout-ms`, values[`long-poll-timeout-ms`]),
  webhooks: values.webhooks,
}
if (values[`data-dir`]) options.dataDir = values[`data-dir`]

const server = new DurableStreamTestServer(options)
const url = await server.start()
console.error(`listening on ${url}`)

let stopping = false
async function shutdown(signal) {
  if (stopping) return
  stopping = true
  // Never hang on shutdown: a stuck connection must not turn SIGTERM into a timeout.
  setTimeout(() => {
    console.error(`reference_server: stop() took too long after ${signal}, exiting`)
    process.exit(1)
  }, 5000).unref()
  // stop() waits for every connection to close, and a request still in flight (e.g. a
  // long-poll next to an SSE reader) can keep it waiting: close idle keep-alive sockets
  // as they appear, then drop the rest after a grace period so that the store is still
  // closed cleanly. (`server` is private in the typings.)
  const httpServer = server.server
  setInterval(() => httpServer?.closeIdleConnections?.(), 50).unref()
  setTimeout(() => httpServer?.closeAllConnections?.(), 1000).unref()
  try {
    await server.stop()
    process.exit(0)
  } catch (err) {
    console.error(`reference_server: error while stopping on ${signal}:`, err)
    process.exit(1)
  }
}
process.on(`SIGTERM`, () => shutdown(`SIGTERM`))
process.on(`SIGINT`, () => shutdown(`SIGINT`))
