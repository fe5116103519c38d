import { singleStatement } from './sql.mjs';
import { scanBackendOutput, syncMessage } from './wire.mjs';

// One backend serves many clients. A client holds the backend from its first message until it
// is idle outside a transaction; others queue. When the holder changes, the outgoing client's
// session state (settings, SQL-level prepared statements, temp relations, advisory locks) is
// captured and put aside, and the incoming client's state is put back.

const UNSWAPPABLE_SETTINGS = new Set([
  'is_superuser',
  'session_authorization',
  'transaction_isolation',
  'transaction_read_only',
  'transaction_deferrable',
]);
const DROP_BY_KIND = {
  r: 'table', p: 'table', f: 'foreign table', v: 'view', m: 'materialized view', S: 'sequence',
};
const SETTING_NAME = /^[A-Za-z_][A-Za-z0-9_.]*$/;

export const quoteLiteral = (s) => `'${String(s).replaceAll("'", "''")}'`;
export const quoteIdent = (s) => `"${String(s).replaceAll('"', '""')}"`;

// Custom settings (with a dot, such as myapp.flag) are placeholders that pg_settings does not
// list, so the bridge remembers every such name it sees and reads those explicitly.
const CUSTOM_SETTING = /\b(?:set|reset|set_config\s*\(\s*')\s*(?:session\s+|local\s+)?"?([A-Za-z_][\w$]*\.[\w$.]+)/gi;

const SNAPSHOT_SQL = `select json_build_object(
  'settings', coalesce((select json_object_agg(name, setting) from pg_catalog.pg_settings
                        where source = 'session'), '{}'::json),
  'prepared', coalesce((select json_object_agg(name, statement) from pg_catalog.pg_prepared_statements
                        where from_sql), '{}'::json),
  'temp', coalesce((select json_agg(json_build_array(relname::text, relkind::text)
                                     order by relkind <> 'r', relname) from pg_catalog.pg_class
                    where relnamespace = pg_catalog.pg_my_temp_schema()
                      and relkind in ('r', 'p', 'i', 'I', 'S', 'v', 'm', 'f')), '[]'::json),
  'role', pg_catalog.current_setting('role'),
  'cursors', coalesce((select json_agg(name::text) from pg_catalog.pg_cursors where is_holdable),
                      '[]'::json),
  'locks', coalesce((select json_agg(distinct array[classid::bigint, objid::bigint, objsubid::bigint]::text)
                     from pg_catalog.pg_locks where locktype = 'advisory'), '[]'::json)
)::text`;

export class SessionState {
  constructor(settings) {
    this.startupSettings = { ...settings };
    this.settings = { ...settings };
    this.sqlPrepared = {};
    this.tempRenames = new Map(); // name while swapped out -> own name
    this.advisoryLocks = new Set(); // "{classid,objid,objsubid}"
    this.heldCursors = new Set(); // WITH HOLD cursors it declared (they outlive transactions)
    this.statements = new Map(); // protocol-level statement name in the backend -> its Parse
  }
}

export class SessionManager {
  constructor({ backend, log }) {
    this.backend = backend;
    this.log = log;
    this.baseline = {};
    this.current = null; // owner (client or job runner) whose state is loaded
    this.holder = null;
    this.queue = [];
    this.owners = new Set();
    this.renameCounter = 0;
    this.customSettings = new Set();
  }

  noteCustomSettings(text) {
    for (const [, name] of text.matchAll(CUSTOM_SETTING)) this.customSettings.add(name.toLowerCase());
  }

  captureBaseline() {
    this.baseline = this.#snapshot().settings;
  }

  register(owner) {
    this.owners.add(owner);
  }

  // Resolves when the owner holds the backend with its session state loaded.
  acquire(owner) {
    if (this.holder === owner) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.queue.push({ owner, resolve, reject });
      this.#pump();
    });
  }

  release(owner) {
    if (this.holder !== owner) return;
    this.holder = null;
    this.#pump();
  }

  hasWaiters() {
    return this.queue.length > 0;
  }

  isIdle() {
    return this.holder === null && this.queue.length === 0;
  }

  failAll(err) {
    for (const waiter of this.queue.splice(0)) waiter.reject(err);
  }

  #pump() {
    if (this.holder !== null || this.queue.length === 0) return;
    const { owner, resolve, reject } = this.queue.shift();
    this.holder = owner;
    try {
      this.#switchTo(owner);
      resolve();
      // Other waiters of the same owner (its cleanup, say) hold the backend too.
      for (const w of this.queue.filter((x) => x.owner === owner)) {
        this.queue.splice(this.queue.indexOf(w), 1);
        w.resolve();
      }
    } catch (err) {
      this.holder = null;
      reject(err);
      this.#pump();
    }
  }

  #snapshot() {
    const [[json]] = this.backend.query(SNAPSHOT_SQL);
    const snap = JSON.parse(json);
    snap.locks = new Set(snap.locks);
    snap.kinds = new Map(snap.temp);
    snap.temp = snap.temp.map(([name]) => name);
    // role is hidden from pg_settings; 'none' is its default.
    if (snap.role !== 'none') snap.settings.role = snap.role;
    if (this.customSettings.size) {
      const names = [...this.customSettings];
      const values = this.backend.query(
        `select ${names.map((n) => `pg_catalog.current_setting(${quoteLiteral(n)}, true)`).join(', ')}`,
      )[0];
      names.forEach((name, i) => {
        if (values[i] !== null && values[i] !== '') snap.settings[name] = values[i];
      });
    }
    return snap;
  }

  #switchTo(owner) {
    if (this.current === owner) return;
    const outgoing = this.current;
    const snap = this.#snapshot();
    if (outgoing && this.owners.has(outgoing)) this.#swapOut(outgoing, snap);
    this.#applySettings(snap.settings, owner.session.settings);
    this.#swapIn(owner);
    this.current = owner;
  }

  #swapOut(owner, snap) {
    const s = owner.session;
    s.settings = Object.fromEntries(
      Object.entries(snap.settings).filter(([name]) => !UNSWAPPABLE_SETTINGS.has(name)),
    );
    // pg_prepared_statements holds the whole query string that contained the PREPARE. Only a
    // string that is the PREPARE alone can be replayed; others stay in place (and visible).
    s.sqlPrepared = {};
    for (const [name, text] of Object.entries(snap.prepared)) {
      const statement = singleStatement(text);
      if (!statement || !/^prepare\b/i.test(statement)) continue;
      s.sqlPrepared[name] = statement;
      this.backend.tryQuery(`deallocate ${quoteIdent(name)}`);
    }
    const parked = new Set();
    for (const other of this.owners) for (const n of other.session.tempRenames.keys()) parked.add(n);
    for (const rel of snap.temp) {
      if (parked.has(rel)) continue;
      const alias = `_bridge_${owner.id}_${++this.renameCounter}`;
      if (this.backend.tryQuery(`alter table pg_temp.${quoteIdent(rel)} rename to ${quoteIdent(alias)}`)) {
        s.tempRenames.set(alias, rel);
      }
    }
    const heldByOthers = this.#ofOthers(owner, 'advisoryLocks');
    s.advisoryLocks = new Set([...snap.locks].filter((k) => !heldByOthers.has(k)));
    const cursorsOfOthers = this.#ofOthers(owner, 'heldCursors');
    s.heldCursors = new Set(snap.cursors.filter((c) => !cursorsOfOthers.has(c)));
  }

  #ofOthers(owner, field) {
    const found = new Set();
    for (const other of this.owners) {
      if (other !== owner) for (const item of other.session[field]) found.add(item);
    }
    return found;
  }

  #swapIn(owner) {
    const s = owner.session;
    for (const [alias, rel] of s.tempRenames) {
      this.backend.tryQuery(`alter table pg_temp.${quoteIdent(alias)} rename to ${quoteIdent(rel)}`);
    }
    s.tempRenames.clear();
    for (const statement of Object.values(s.sqlPrepared)) this.backend.tryQuery(statement);
    s.sqlPrepared = {};
  }

  // Brings the backend from the settings in `live` to exactly `wanted`. Resets go first and a
  // role is set last, so that every other setting is applied with the session user's rights.
  #applySettings(live, wanted) {
    const resets = [];
    const sets = [];
    const usable = (name) => !UNSWAPPABLE_SETTINGS.has(name) && SETTING_NAME.test(name);
    for (const name of Object.keys(live)) {
      if (!(name in wanted) && usable(name)) resets.push(`execute 'reset ${name}';`);
    }
    for (const [name, value] of Object.entries(wanted)) {
      if (usable(name) && (live[name] !== value || name === 'role')) {
        sets.push(`perform pg_catalog.set_config(${quoteLiteral(name)}, ${quoteLiteral(value)}, false);`);
      }
    }
    resets.sort((a, b) => (b.includes("'reset role'") ? 1 : 0) - (a.includes("'reset role'") ? 1 : 0));
    sets.sort((a, b) => (a.includes("'role'") ? 1 : 0) - (b.includes("'role'") ? 1 : 0));
    const steps = [...resets, ...sets];
    if (steps.length === 0) return;
    const body = steps.map((step) => `begin ${step} exception when others then null; end;`).join('\n');
    this.backend.tryQuery(`do $bridge$ begin\n${body}\nend $bridge$`);
  }

  // RESET ALL for one client: back to the settings it connected with.
  resetSettings(owner) {
    const live = this.#snapshot().settings;
    this.#applySettings(live, owner.session.startupSettings);
  }

  // Frees everything a departing owner left in the backend. The owner must hold the backend.
  cleanup(owner) {
    const s = owner.session;
    for (const name of s.statements.keys()) this.backend.tryQuery(`deallocate ${quoteIdent(name)}`);
    s.statements.clear();
    const snap = this.#snapshot();
    this.#dropOwnState(owner, snap);
    this.owners.delete(owner);
    // Leave the departing owner's settings in place; the next switch resets them.
    this.current = { id: -1, session: new SessionState(snap.settings) };
  }

  // DISCARD ALL for one client.
  discard(owner) {
    const s = owner.session;
    for (const name of s.statements.keys()) this.backend.tryQuery(`deallocate ${quoteIdent(name)}`);
    s.statements.clear();
    const snap = this.#snapshot();
    this.#dropOwnState(owner, snap);
    this.#applySettings(snap.settings, s.startupSettings);
  }

  // After a backend-wide DEALLOCATE ALL by `owner`, other clients get their statements back.
  restoreOthersStatements(owner, inTransaction) {
    owner.session.statements.clear();
    for (const other of this.owners) {
      if (other === owner) continue;
      for (const [name, parse] of other.session.statements) {
        if (inTransaction) this.backend.query('savepoint _bridge_restore');
        const { error } = scanBackendOutput(this.backend.exec(Buffer.concat([parse, syncMessage()])));
        if (inTransaction) {
          this.backend.query(error ? 'rollback to savepoint _bridge_restore' : 'release savepoint _bridge_restore');
        }
        if (error) other.session.statements.delete(name);
      }
    }
  }

  #dropOwnState(owner, snap) {
    for (const name of Object.keys(snap.prepared)) this.backend.tryQuery(`deallocate ${quoteIdent(name)}`);
    const parked = new Set();
    for (const other of this.owners) {
      if (other !== owner) for (const n of other.session.tempRenames.keys()) parked.add(n);
    }
    for (const rel of snap.temp) {
      const kind = DROP_BY_KIND[snap.kinds.get(rel)];
      if (!parked.has(rel) && kind) {
        this.backend.tryQuery(`drop ${kind} if exists pg_temp.${quoteIdent(rel)} cascade`);
      }
    }
    const heldByOthers = this.#ofOthers(owner, 'advisoryLocks');
    for (const key of snap.locks) {
      if (heldByOthers.has(key)) continue;
      const [classid, objid, objsubid] = key.replace(/[{}]/g, '').split(',').map(Number);
      // Advisory lock keys: objsubid 1 = one bigint (classid high, objid low), 2 = two int4 keys.
      const args =
        objsubid === 1
          ? `((${classid}::bigint << 32) | ${objid}::bigint)`
          : `(${classid | 0}::int, ${objid | 0}::int)`;
      for (let i = 0; i < 1000; i++) {
        const rows = this.backend.tryQuery(`select pg_catalog.pg_advisory_unlock${args}`);
        if (!rows || rows[0][0] !== 't') break;
      }
    }
    owner.session.advisoryLocks.clear();
    const cursorsOfOthers = this.#ofOthers(owner, 'heldCursors');
    for (const name of snap.cursors) {
      if (!cursorsOfOthers.has(name)) this.backend.tryQuery(`close ${quoteIdent(name)}`);
    }
    owner.session.heldCursors.clear();
  }
}
