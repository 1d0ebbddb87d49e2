// Runs the official Durable Streams server conformance suite against a running server.
//
//   DS_BASE_URL=http://127.0.0.1:4437 [DS_LONG_POLL_TIMEOUT_MS=500] [DS_SUBSCRIPTIONS=1] npx vitest run
//
// DS_LONG_POLL_TIMEOUT_MS must match the server's long-poll timeout: several tests wait
// for a real 204 and are given that long plus one second.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.DS_BASE_URL
if (!baseUrl) {
  throw new Error(`DS_BASE_URL is not set (e.g. DS_BASE_URL=http://127.0.0.1:4437)`)
}

const longPollTimeoutMs = Number(process.env.DS_LONG_POLL_TIMEOUT_MS ?? `500`)
if (!Number.isFinite(longPollTimeoutMs) || longPollTimeoutMs <= 0) {
  throw new Error(`DS_LONG_POLL_TIMEOUT_MS must be a positive number of milliseconds`)
}

runConformanceTests({
  baseUrl: baseUrl.replace(/\/+$/, ``),
  longPollTimeoutMs,
  subscriptions: process.env.DS_SUBSCRIPTIONS === `1`,
})
