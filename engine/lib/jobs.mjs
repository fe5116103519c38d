// PGlite has no background workers, so TimescaleDB's scheduler never starts. This runner plays
// its part: it runs due jobs (refresh, retention, compression policies, user actions) with
// run_job and records each run in TimescaleDB's own job statistics, so that
// timescaledb_information.job_stats and job_history read the same as on a server.

import { SessionState, quoteLiteral } from './sessions.mjs';

const DUE_JOBS_SQL = `select j.id from _timescaledb_config.bgw_job j
  left join _timescaledb_internal.bgw_job_stat s on s.job_id = j.id
  where j.scheduled and coalesce(s.next_start, j.initial_start, '-infinity') <= pg_catalog.now()
  order by coalesce(s.next_start, j.initial_start, '-infinity'), j.id`;

function recordRunSql(jobId, start, finish, error) {
  const failed = error ? 'true' : 'false';
  const success = error ? 'false' : 'true';
  const s = `${quoteLiteral(start.toISOString())}::timestamptz`;
  const f = `${quoteLiteral(finish.toISOString())}::timestamptz`;
  const data = error
    ? quoteLiteral(JSON.stringify({ error_data: { message: error.message, sqlerrcode: error.code } }))
    : 'null';
  return `
with job as (select * from _timescaledb_config.bgw_job where id = ${jobId}),
next as (
  select case
    when ${failed} then ${f} + least(job.retry_period, job.schedule_interval)
    when job.fixed_schedule then coalesce(job.initial_start, ${s}) + job.schedule_interval * (
      floor(extract(epoch from ${f} - coalesce(job.initial_start, ${s}))
                       / extract(epoch from job.schedule_interval)) + 1)
    else ${f} + job.schedule_interval end as at
  from job
),
history as (
  insert into _timescaledb_internal.bgw_job_stat_history
    (job_id, pid, execution_start, execution_finish, succeeded, data)
  select ${jobId}, 0, ${s}, ${f}, ${success}, ${data}::jsonb from job
)
insert into _timescaledb_internal.bgw_job_stat as st
  (job_id, last_start, last_finish, next_start, last_successful_finish, last_run_success,
   total_runs, total_duration, total_duration_failures, total_successes, total_failures,
   total_crashes, consecutive_failures, consecutive_crashes, flags)
select ${jobId}, ${s}, ${f}, next.at, case when ${success} then ${f} else '-infinity' end, ${success},
       1, ${f} - ${s}, case when ${success} then '0'::interval else ${f} - ${s} end,
       ${success}::int, (not ${success})::int, 0, (not ${success})::int, 0, 0
from next
on conflict (job_id) do update set
  last_start = excluded.last_start,
  last_finish = excluded.last_finish,
  next_start = excluded.next_start,
  last_successful_finish = case when ${success} then excluded.last_finish else st.last_successful_finish end,
  last_run_success = excluded.last_run_success,
  total_runs = st.total_runs + 1,
  total_duration = st.total_duration + excluded.total_duration,
  total_duration_failures = st.total_duration_failures + excluded.total_duration_failures,
  total_successes = st.total_successes + excluded.total_successes,
  total_failures = st.total_failures + excluded.total_failures,
  consecutive_failures = case when ${success} then 0 else st.consecutive_failures + 1 end`;
}

export class JobRunner {
  constructor({ backend, sessions, log, pollMs }) {
    this.backend = backend;
    this.sessions = sessions;
    this.log = log;
    this.pollMs = pollMs;
    this.timer = null;
    this.running = false;
    this.stopped = false;
    // The runner takes turns on the backend like a client, with the server's default settings.
    this.id = 0;
    this.session = null;
  }

  start() {
    if (!this.pollMs) return;
    this.session = new SessionState(this.sessions.baseline);
    this.sessions.register(this);
    this.#schedule();
  }

  stop() {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  #schedule() {
    if (this.stopped) return;
    this.timer = setTimeout(() => this.tick(), this.pollMs);
    this.timer.unref();
  }

  // Runs every due job once. Waits for idle clients only: it never jumps a queue.
  async tick() {
    if (this.running || this.stopped) return this.#schedule();
    this.running = true;
    try {
      if (!this.sessions.isIdle()) return;
      await this.sessions.acquire(this);
      try {
        const due = this.backend.tryQuery(DUE_JOBS_SQL) ?? [];
        for (const [id] of due) {
          if (this.stopped) break;
          this.runJob(Number(id));
        }
      } finally {
        this.sessions.release(this);
      }
    } catch (err) {
      this.log(`job runner: ${err.message}`);
    } finally {
      this.running = false;
      this.#schedule();
    }
  }

  runJob(id) {
    const start = new Date();
    let error = null;
    try {
      this.backend.query(`call run_job(${id})`);
    } catch (err) {
      if (err.code === undefined) throw err;
      error = err;
    }
    const finish = new Date();
    this.backend.tryQuery(recordRunSql(id, start, finish, error));
    const took = finish - start;
    if (error) this.log(`job ${id} failed after ${took} ms: ${error.message}`);
    else this.log(`job ${id} ran in ${took} ms`);
  }
}
