// --session-memory: what the session index costs in Redis, per session, for subjects holding 1,
// 10, 100... sessions. Rotor's own app (in this process: nothing here is timed) lists sessions
// through its store, as issuance does; the keys are then weighed with INFO used_memory and MEMORY
// USAGE, and deleted.
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { clockUs, newSid } from '../src/minting.js'
import type { RunContext } from './context.js'
import { deletePrefix, usedMemory } from './redis.js'
import { table } from './report.js'

/** Sessions written per measurement: enough that Redis's own noise is a rounding error. */
const TOTAL = 20_000
/** Subjects weighed one by one with MEMORY USAGE. */
const SAMPLED = 50

export interface SessionMemoryRow {
  perSubject: number
  sessions: number
  bytesPerSessionUsedMemory: number
  bytesPerSessionMemoryUsage: number
  /** Redis's encoding of a subject's hash and its sorted sets (listpack is compact; past 128 entries, hashtable and skiplist). */
  encodings: string
}

export async function measureSessionMemory (run: RunContext, counts: number[]): Promise<SessionMemoryRow[]> {
  const redis = run.redis
  if (redis === null) throw new Error('no connection to the shared Redis')
  const prefix = `${run.prefix}sm:`
  const app = await buildApp(loadConfig({ LOG_LEVEL: 'silent', REDIS_URL: run.options.redisUrl, REDIS_KEY_PREFIX: prefix, API_KEYS: run.apiKey, DENYLIST_ENABLED: 'true' }))
  const rows: SessionMemoryRow[] = []
  try {
    for (const perSubject of counts) {
      const subjects = Math.max(1, Math.round(TOTAL / perSubject))
      const before = await usedMemory(redis)
      const nowSec = Math.floor(Date.now() / 1000)
      for (let s = 0; s < subjects; s++) {
        // A realistic entry: a named key, a device label, a week to live.
        await Promise.all(Array.from({ length: perSubject }, async () => {
          const createdUs = clockUs()
          await app.denylist.recordSession(`user-${perSubject}-${s}`, {
            sid: newSid(createdUs), createdUs, lastRefreshedAt: nowSec, expiresAt: nowSec + 7 * 86_400, clientId: 'gateway', device: 'Firefox on Linux'
          }, Date.now())
        }))
      }
      const after = await usedMemory(redis)
      let weighed = 0
      const sampled = Math.min(SAMPLED, subjects)
      for (let s = 0; s < sampled; s++) {
        for (const key of keysOf(prefix, `user-${perSubject}-${s}`)) weighed += Number(await redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0'))
      }
      const [hash, byExpiry] = keysOf(prefix, `user-${perSubject}-0`)
      const encodings = `${String(await redis.call('OBJECT', 'ENCODING', hash))}/${String(await redis.call('OBJECT', 'ENCODING', byExpiry))}`
      const sessions = subjects * perSubject
      rows.push({ perSubject, sessions, bytesPerSessionUsedMemory: (after - before) / sessions, bytesPerSessionMemoryUsage: weighed / (sampled * perSubject), encodings })
      run.say(`  ${perSubject} per subject: ${sessions} sessions, ${((after - before) / sessions).toFixed(0)} bytes each (used_memory), ${(weighed / (sampled * perSubject)).toFixed(0)} (MEMORY USAGE); ${encodings}`)
      await deletePrefix(redis, prefix)
    }
  } finally {
    await app.close()
    await deletePrefix(redis, prefix)
  }
  return rows
}

/** The two keys of a subject's index (see INDEX in plugins/store/scripts.ts); these subjects need no `~` tag. */
function keysOf (prefix: string, sub: string): [string, string] {
  return [`${prefix}{${sub}}:sessions`, `${prefix}{${sub}}:sessions:by-expiry`]
}

export function sessionMemoryTable (rows: SessionMemoryRow[]): string {
  return table(['sessions per subject', 'sessions', 'bytes/session (used_memory)', 'bytes/session (MEMORY USAGE)', 'encoding (hash/zset)'],
    rows.map((row) => [String(row.perSubject), String(row.sessions), row.bytesPerSessionUsedMemory.toFixed(0), row.bytesPerSessionMemoryUsage.toFixed(0), row.encodings]))
}
