#!/usr/bin/env node
// Embedded TimescaleDB: PGlite (PostgreSQL 17 in WASM) with TimescaleDB, served over the
// PostgreSQL wire protocol to any number of local clients.
import { mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { inspect, parseArgs } from 'node:util';

import { Backend } from './lib/backend.mjs';
import { Client } from './lib/client.mjs';
import { JobRunner } from './lib/jobs.mjs';
import { SessionManager } from './lib/sessions.mjs';

const USAGE = `usage: node server.mjs [--data-dir DIR] [--host HOST] [--port PORT] [--socket PATH]
                      [--job-poll-ms MS] [--idle-in-transaction-timeout-ms MS]

  --data-dir DIR     keep the database in DIR (default: in memory, gone at exit)
  --host HOST        listen address (default 127.0.0.1)
  --port PORT        TCP port; 0 picks a free one (default 0)
  --socket PATH      listen on a Unix socket instead of TCP
  --job-poll-ms MS   how often due TimescaleDB jobs are looked for; 0 disables (default 1000)
  --idle-in-transaction-timeout-ms MS
                     end a client that idles inside a transaction this long while
                     others wait for the backend; 0 disables (default 30000)`;

const REPORTED_PARAMETERS = [
  'server_version', 'server_encoding', 'client_encoding', 'DateStyle', 'IntervalStyle',
  'TimeZone', 'integer_datetimes', 'standard_conforming_strings', 'is_superuser',
  'session_authorization', 'application_name', 'default_transaction_read_only', 'in_hot_standby',
];

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      'data-dir': { type: 'string' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      socket: { type: 'string' },
      'job-poll-ms': { type: 'string', default: '1000' },
      'idle-in-transaction-timeout-ms': { type: 'string', default: '30000' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const number = (name) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer`);
    return n;
  };
  return {
    dataDir: values['data-dir'] ? path.resolve(values['data-dir']) : undefined,
    host: values.host,
    port: number('port'),
    socket: values.socket,
    jobPollMs: number('job-poll-ms'),
    idleInTransactionTimeoutMs: number('idle-in-transaction-timeout-ms'),
  };
}

class Engine {
  constructor(options) {
    this.options = options;
    this.log = (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);
    this.backend = new Backend({ dataDir: options.dataDir, log: this.log });
    this.sessions = new SessionManager({ backend: this.backend, log: this.log });
    this.clients = new Set();
    this.server = null;
    this.jobs = null;
    this.stopping = false;
    this.debug = Boolean(process.env.ENGINE_DEBUG);
  }

  async start() {
    const started = Date.now();
    if (this.options.dataDir) mkdirSync(this.options.dataDir, { recursive: true });
    await this.backend.open();
    this.sessions.captureBaseline();
    const values = this.backend.query(
      `select ${REPORTED_PARAMETERS.map((p) => `pg_catalog.current_setting('${p}')`).join(', ')}`,
    )[0];
    this.parameterStatus = Object.fromEntries(REPORTED_PARAMETERS.map((p, i) => [p, values[i]]));
    this.jobs = new JobRunner({
      backend: this.backend,
      sessions: this.sessions,
      log: this.log,
      pollMs: this.options.jobPollMs,
    });
    this.jobs.start();
    this.server = net.createServer((socket) => {
      if (this.stopping) return socket.destroy();
      this.clients.add(new Client(socket, this));
    });
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      if (this.options.socket) {
        rmSync(this.options.socket, { force: true });
        this.server.listen(this.options.socket, resolve);
      } else this.server.listen(this.options.port, this.options.host, resolve);
    });
    const address = this.server.address();
    const ready = this.options.socket
      ? { event: 'ready', socket: this.options.socket }
      : { event: 'ready', host: address.address, port: address.port };
    this.log(
      `engine ready in ${Date.now() - started} ms (${this.options.dataDir ?? 'in memory'}), ` +
        `TimescaleDB ${this.backend.query("select extversion from pg_extension where extname = 'timescaledb'")[0][0]}`,
    );
    process.stdout.write(`${JSON.stringify(ready)}\n`);
  }

  // Fast shutdown: open transactions are rolled back, committed work is checkpointed.
  async stop(signal) {
    if (this.stopping) return;
    this.stopping = true;
    this.log(`received ${signal}; shutting down`);
    this.jobs?.stop();
    this.server?.close();
    for (const client of [...this.clients]) {
      client.terminate('57P01', 'terminating connection due to administrator command');
    }
    // Let the departing clients' rollbacks and cleanups take their turns.
    for (let i = 0; i < 100 && !this.sessions.isIdle(); i++) await new Promise((r) => setTimeout(r, 50));
    await this.backend.close();
    this.log('shutdown complete');
    process.exit(0);
  }

  // After a WASM fault the backend's memory cannot be trusted: close every client and exit.
  fault(err) {
    this.log(`FATAL: ${err.message}`);
    for (const client of [...this.clients]) client.socket.destroy();
    this.sessions.failAll(err);
    process.exit(70);
  }
}

let options;
try {
  options = parseOptions(process.argv.slice(2));
} catch (err) {
  console.error(`${err.message}\n${USAGE}`);
  process.exit(2);
}
const engine = new Engine(options);
process.on('SIGTERM', () => engine.stop('SIGTERM'));
process.on('SIGINT', () => engine.stop('SIGINT'));
process.on('uncaughtException', (err) => engine.fault(err));
process.on('unhandledRejection', (err) => engine.fault(err instanceof Error ? err : new Error(String(err))));
try {
  await engine.start();
} catch (err) {
  engine.log(`failed to start: ${err instanceof Error ? err.stack : inspect(err)}`);
  process.exit(1);
}
