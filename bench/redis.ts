import { randomBytes } from 'node:crypto'
import { connect, type Socket } from 'node:net'
import { Redis } from 'ioredis'

/** The bench's own connection: fail rather than hang if Redis is not there. */
export async function connectRedis (url: string): Promise<Redis> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000, retryStrategy: () => null })
  redis.on('error', () => {})
  await redis.connect()
  return redis
}

/** Deletes every key under `prefix` with SCAN + DEL (never FLUSH: the Redis is shared). */
export async function deletePrefix (redis: Redis, prefix: string): Promise<number> {
  let cursor = '0'
  let deleted = 0
  // DELs overlap the next SCANs (a few in flight): a million keys go in seconds, not minutes.
  let pending: Array<Promise<number>> = []
  const settle = async (): Promise<void> => {
    for (const count of await Promise.all(pending)) deleted += count
    pending = []
  }
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${escapeGlob(prefix)}*`, 'COUNT', 10_000)
    if (keys.length > 0) pending.push(redis.del(...keys))
    if (pending.length >= 8) await settle()
    cursor = next
  } while (cursor !== '0')
  await settle()
  return deleted
}

/** Counts the keys matching a glob (SCAN; the bench's own prefix only). */
export async function countKeys (redis: Redis, pattern: string): Promise<number> {
  let cursor = '0'
  let count = 0
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 10_000)
    count += keys.length
    cursor = next
  } while (cursor !== '0')
  return count
}

/** SCAN MATCH treats * ? [ ] \ as a pattern: the prefix is taken literally. */
export function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`)
}

export async function usedMemory (redis: Redis): Promise<number> {
  const info = await redis.info('memory')
  const match = /^used_memory:(\d+)/m.exec(info)
  if (match === null) throw new Error('INFO memory has no used_memory')
  return Number(match[1])
}

export async function redisVersion (redis: Redis): Promise<string> {
  const info = await redis.info('server')
  return /^redis_version:(\S+)/m.exec(info)?.[1] ?? 'unknown'
}

export interface FillResult {
  entries: number
  subjects: number
  seconds: number
  perSecond: number
  usedMemoryBefore: number
  usedMemoryAfter: number
  /** (used_memory after - before) / entries. */
  bytesPerEntryUsedMemory: number
  /** Mean of MEMORY USAGE <key> SAMPLES 0 over `sampled` keys. */
  bytesPerEntryMemoryUsage: number
  sampled: number
  exampleKey: string
  keyLength: number
}

/** Not a secret: spreading subjects and TTLs (crypto.randomInt would be the slowest part of a fill). */
function below (n: number): number {
  return Math.floor(Math.random() * n)
}

const PIPELINE = 10_000
const IN_FLIGHT = 2
const DAY_MS = 86_400_000

function bulk (text: string): string {
  return `$${Buffer.byteLength(text)}\r\n${text}\r\n`
}

/** One command in RESP, as Redis reads it off the wire. */
function resp (...args: string[]): string {
  return `*${args.length}\r\n${args.map(bulk).join('')}`
}

/**
 * A bare RESP connection for bulk writes: 10,000 SETs go out as one buffer, and the replies are
 * only counted (every reply to SET, AUTH and SELECT is one line: +OK or -ERR). ioredis spends
 * more on its per-command objects and their garbage than Redis spends on the SETs.
 */
class RawPipeline {
  private readonly socket: Socket
  private readonly queue: Array<{ remaining: number, resolve: () => void, reject: (error: Error) => void }> = []
  private atLineStart = true
  private errorLine: string | null = null
  private failure: Error | null = null

  private constructor (socket: Socket) {
    this.socket = socket
    socket.on('data', (chunk: Buffer) => { this.read(chunk) })
    socket.on('error', (error) => { this.fail(error) })
    socket.on('close', () => { this.fail(new Error('Redis closed the fill connection')) })
  }

  static async open (url: string): Promise<RawPipeline> {
    const parsed = new URL(url)
    if (parsed.protocol !== 'redis:') throw new Error(`the denylist fill speaks plain RESP over TCP: ${parsed.protocol} URLs are not supported`)
    const socket = connect(Number(parsed.port === '' ? 6379 : parsed.port), parsed.hostname.replace(/^\[|\]$/g, ''))
    socket.setNoDelay(true)
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
    })
    const pipe = new RawPipeline(socket)
    const password = decodeURIComponent(parsed.password)
    if (password !== '') {
      const user = decodeURIComponent(parsed.username)
      await pipe.send(user === '' ? resp('AUTH', password) : resp('AUTH', user, password), 1)
    }
    const db = parsed.pathname.replace('/', '')
    if (db !== '' && db !== '0') await pipe.send(resp('SELECT', db), 1)
    return pipe
  }

  /** Writes `commands` (RESP) and resolves when `replies` replies have come back, all +OK. */
  async send (commands: string, replies: number): Promise<void> {
    if (this.failure !== null) throw this.failure
    const done = new Promise<void>((resolve, reject) => { this.queue.push({ remaining: replies, resolve, reject }) })
    this.socket.write(commands)
    return done
  }

  close (): void {
    this.socket.removeAllListeners('close')
    this.socket.destroy()
  }

  private read (chunk: Buffer): void {
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i]
      if (this.atLineStart && byte === 0x2d /* - */) {
        const end = chunk.indexOf(0x0d, i)
        this.errorLine ??= chunk.subarray(i, end === -1 ? chunk.length : end).toString()
      }
      this.atLineStart = false
      if (byte !== 0x0a) continue
      this.atLineStart = true
      const head = this.queue[0]
      if (head === undefined) continue
      if (--head.remaining === 0) {
        this.queue.shift()
        if (this.errorLine === null) head.resolve()
        else head.reject(new Error(`fill: Redis answered ${this.errorLine}`))
        this.errorLine = null
      }
    }
  }

  private fail (error: Error): void {
    this.failure ??= error
    for (const waiting of this.queue.splice(0)) waiting.reject(error)
  }
}

/**
 * Fills the denylist the way Rotor's rotations leave it: `<prefix>{<sub>}:j:<jti>` = the rotation
 * time in ms, PX the rotated token's remaining life. Refresh tokens live REFRESH_TOKEN_TTL (7 d by
 * default) and are rotated at any point of their life, so the remaining life is uniform over
 * (1 min, 7 d) and the rotation time lies within the last 7 d. Subjects: `user-<n>`, ten records
 * per subject on average (users with several devices and weeks of rotations). Pipelines of 10,000
 * SETs, two in flight.
 */
export async function fillDenylist (redis: Redis, url: string, prefix: string, entries: number, refreshTtlMs = 7 * DAY_MS): Promise<FillResult> {
  const subjects = Math.max(1, Math.floor(entries / 10))
  const usedMemoryBefore = await usedMemory(redis)
  const started = process.hrtime.bigint()
  const sample: string[] = []
  const sampleEvery = Math.max(1, Math.floor(entries / 200))
  let exampleKey = ''

  const pipe = await RawPipeline.open(url)
  let written = 0
  const batch = async (): Promise<void> => {
    while (written < entries) {
      const start = written
      const size = Math.min(PIPELINE, entries - start)
      written += size
      const ids = randomBytes(16 * size)
      const now = Date.now()
      let commands = ''
      for (let i = 0; i < size; i++) {
        const jti = ids.subarray(i * 16, i * 16 + 16).toString('base64url')
        const key = `${prefix}{user-${below(subjects)}}:j:${jti}`
        const ttl = 60_000 + below(refreshTtlMs - 60_000)
        const rotatedAt = now - below(refreshTtlMs - ttl + 1)
        commands += resp('SET', key, String(rotatedAt), 'PX', String(ttl))
        if ((start + i) % sampleEvery === 0) sample.push(key)
        if (exampleKey === '') exampleKey = key
      }
      await pipe.send(commands, size)
    }
  }
  try {
    await Promise.all(Array.from({ length: IN_FLIGHT }, batch))
  } finally {
    pipe.close()
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const usedMemoryAfter = await usedMemory(redis)

  let total = 0
  for (const key of sample) total += Number(await redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0'))
  return {
    entries,
    subjects,
    seconds,
    perSecond: entries / seconds,
    usedMemoryBefore,
    usedMemoryAfter,
    bytesPerEntryUsedMemory: (usedMemoryAfter - usedMemoryBefore) / entries,
    bytesPerEntryMemoryUsage: sample.length === 0 ? 0 : total / sample.length,
    sampled: sample.length,
    exampleKey,
    keyLength: Buffer.byteLength(exampleKey)
  }
}
