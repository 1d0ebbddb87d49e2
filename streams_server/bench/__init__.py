"""Benchmarks of the streams server side by side with the Node reference server.

Run ``python -m streams_server.bench --help``. Not part of the test suite: it starts real
servers (this project's and ``@durable-streams/server``) on free ports and measures them one
at a time with the same workloads (`streams_server.bench.workloads`), then prints one table
(`streams_server.bench.table`). Modules: `processes` starts and stops servers, `httpclient`
and `live` are the cheap HTTP and SSE clients, `stats` computes percentiles.
"""
