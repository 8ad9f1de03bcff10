import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../src/app.js'
import { loadConfig, type Config } from '../src/config.js'

/** The tap test object, as much of it as the helpers use. */
export interface Test {
  teardown: (fn: () => unknown) => void
}

/** The assertions the shared checks make. */
export interface Assertions {
  // Method syntax: tap's own signatures take more than these, and methods compare bivariantly.
  same (found: unknown, wanted: unknown, message: string): unknown
  equal (found: unknown, wanted: unknown, message: string): unknown
  ok (found: unknown, message: string): unknown
}

export const API_KEY = 'test-api-key-0123456789abcdef'
export const OTHER_API_KEY = 'other-api-key-0123456789abcdef'

/** The machine's Redis (CI may point elsewhere); tests never flush it, they use their own prefix. */
export const REDIS_URL = process.env['TEST_REDIS_URL'] ?? 'redis://127.0.0.1:6379'

/** Settings for a test: a real Redis under a prefix no other test shares, quiet logs. */
export function testConfig (env: Record<string, string> = {}): Config {
  return loadConfig({
    API_KEYS: `${API_KEY},${OTHER_API_KEY}`,
    LOG_LEVEL: 'silent',
    REDIS_URL,
    REDIS_KEY_PREFIX: `rotor-test:${randomBytes(6).toString('hex')}:`,
    RATE_LIMIT_MAX: '100000',
    ...env
  })
}

/** Every line the app logged, parsed; and the raw text, to prove what never appears in it. */
export class LogCapture extends Writable {
  readonly lines: Array<Record<string, unknown>> = []
  text = ''
  override _write (chunk: Buffer, _encoding: string, callback: () => void): void {
    const text = chunk.toString()
    this.text += text
    for (const line of text.split('\n')) if (line !== '') this.lines.push(JSON.parse(line) as Record<string, unknown>)
    callback()
  }
}

/** Deletes every key under a prefix (SCAN, never FLUSH: the Redis is shared). */
export async function deletePrefix (url: string, prefix: string): Promise<void> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null })
  redis.on('error', () => {})
  try {
    await redis.connect()
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      if (keys.length > 0) await redis.del(...keys)
      cursor = next
    } while (cursor !== '0')
  } catch {
    // A test's own Redis may be stopped already: nothing left to clean.
  } finally {
    redis.disconnect()
  }
}

/** Builds the app for a test, with teardown that closes it and removes its Redis keys. */
export async function build (t: Test, env: Record<string, string> = {}, logs?: LogCapture): Promise<FastifyInstance> {
  const config = testConfig(logs === undefined ? env : { LOG_LEVEL: 'info', ...env })
  const app = await buildApp(config, logs === undefined ? {} : { logStream: logs })
  t.teardown(async () => {
    await app.close()
    if (config.redis.kind === 'single') await deletePrefix(config.redis.url, config.redisKeyPrefix)
  })
  return app
}

/** Listens on a free port of the loopback; returns the base URL. */
export async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return `http://127.0.0.1:${address.port}`
}

export async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => { typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port')) })
    })
  })
}

/** A throwaway redis-server of the test's own, for anything that stops, slows or breaks Redis. */
export class OwnRedis {
  readonly port: number
  private process: ChildProcess | null = null
  private dir: string | null = null
  private readonly args: string[]
  private readonly configFile: string[]
  /** `configFile`: a config file to start from (a sentinel needs one it can rewrite). */
  constructor (port: number, args: string[] = [], configFile?: string) {
    this.port = port
    this.args = args
    this.configFile = configFile === undefined ? [] : [configFile]
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  async start (): Promise<void> {
    // ROTOR_TEST_REDIS_LOGS=<dir>: every server of the tests' own logs there, to read after a failure.
    const logs = process.env['ROTOR_TEST_REDIS_LOGS']
    if (logs !== undefined) mkdirSync(logs, { recursive: true })
    const logging = logs === undefined ? [] : ['--logfile', join(logs, `redis-${this.port}-${Date.now()}.log`), '--loglevel', 'verbose']
    // A folder of its own, new at every start: a replica saves what it syncs there, and a server
    // must never load a dump an earlier server left (`--save ''` stops saving, not loading).
    // Only a server brought down by `crash()` starts again in its folder, with what it wrote there.
    this.dir ??= mkdtempSync(join(tmpdir(), `rotor-redis-${this.port}-`))
    this.process = spawn('redis-server', [...this.configFile, '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...logging, ...this.args], {
      stdio: 'ignore', cwd: this.dir
    })
    const client = new Redis(this.url, { lazyConnect: true, retryStrategy: () => 50, maxRetriesPerRequest: 0 })
    client.on('error', () => {})
    const deadline = Date.now() + 5000
    while (Date.now() < deadline) {
      try {
        await client.connect()
        await client.ping()
        client.disconnect()
        return
      } catch {
        client.disconnect()
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
    throw new Error(`redis-server on port ${this.port} did not start`)
  }

  /** Stops it by PID (SIGKILL: like a crash, nothing flushed). */
  async stop (): Promise<void> {
    await this.crash()
    if (this.dir !== null) rmSync(this.dir, { recursive: true, force: true })
    this.dir = null
  }

  /**
   * Kills it (SIGKILL) but keeps its folder: `start()` brings it back on the same port with what it
   * had made durable there (all of it with `--appendonly yes --appendfsync always`).
   */
  async crash (): Promise<void> {
    const child = this.process
    if (child === null || child.exitCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGKILL')
    await exited
    this.process = null
  }

  /** Freezes it (SIGSTOP): connections stay open but nothing answers, like a hung server. */
  pause (): void { this.process?.kill('SIGSTOP') }
  resume (): void { this.process?.kill('SIGCONT') }
}

export async function startRedis (t: Test, args: string[] = []): Promise<OwnRedis> {
  const redis = new OwnRedis(await freePort(), args)
  await redis.start()
  t.teardown(async () => {
    redis.resume()
    await redis.stop()
  })
  return redis
}

export function decodeJwt (token: string): { header: Record<string, unknown>, payload: Record<string, unknown> } {
  const [header = '', payload = ''] = token.split('.')
  return {
    header: JSON.parse(Buffer.from(header, 'base64url').toString()) as Record<string, unknown>,
    payload: JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>
  }
}

export interface Pair {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
  refresh_expires_in: number
}

/** Issues a pair through the route, as a backend would. */
export async function issue (app: FastifyInstance, body: Record<string, unknown> = { sub: 'alice' }): Promise<Pair> {
  const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}` }, payload: body })
  if (response.statusCode !== 200) throw new Error(`issue failed: ${response.statusCode} ${response.body}`)
  return response.json<Pair>()
}

export async function refreshWith (app: FastifyInstance, refreshToken: string): Promise<import('light-my-request').Response> {
  return app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh_token: refreshToken } })
}

export async function introspectToken (app: FastifyInstance, token: string): Promise<Record<string, unknown>> {
  const response = await app.inject({ method: 'POST', url: '/v1/tokens/introspect', headers: { authorization: `Bearer ${API_KEY}` }, payload: { token } })
  return response.json<Record<string, unknown>>()
}

/**
 * Waits until `replica` receives the writes `primary` takes. `master_link_status:up` is not
 * enough: after a diskless sync the primary streams nothing until the replica's first
 * `REPLCONF ACK`, up to a second later (a revocation made in that second reached the replica
 * only later; the Sentinel test failed on it once the tests got faster). A probe key proves it.
 */
export async function untilReplicating (primaryUrl: string, replicaUrl: string): Promise<void> {
  const probe = `rotor-test:replication-probe:${randomBytes(6).toString('hex')}`
  await until('the replica to receive writes', async () => {
    await redisCommand(primaryUrl, 'SET', probe, '1', 'PX', 60_000)
    return await redisCommand(replicaUrl, 'EXISTS', probe) === 1
  })
}

/**
 * A primary with one replica and a sentinel watching them (quorum 1, a primary is down after
 * 1500 ms): failover takes a few seconds. Returns REDIS_SENTINELS and the servers. Not shorter: a
 * primary that merely stalls past it on a busy machine is failed over while it still takes writes, and
 * loses them when it is demoted (a split brain; issue 11).
 */
export async function startSentinel (
  t: Test & { testdir: () => string }, name = 'rotor', options: { proxied?: boolean, downAfterMs?: number } = {}
): Promise<{ sentinels: string, primary: OwnRedis, replica: OwnRedis, sentinel: OwnRedis, proxy: TcpProxy | null }> {
  const fast = ['--repl-diskless-sync-delay', '0']
  const primary = await startRedis(t, fast)
  const replica = await startRedis(t, [...fast, '--replicaof', '127.0.0.1', String(primary.port)])
  await untilReplicating(primary.url, replica.url)
  // proxied: the sentinel knows the primary by a TcpProxy's address, so its clients go through it.
  const proxy = options.proxied === true ? new TcpProxy(primary.port) : null
  if (proxy !== null) t.teardown(() => { proxy.close() })
  const primaryPort = proxy === null ? primary.port : await proxy.listen()
  const port = await freePort()
  const configFile = join(t.testdir(), `sentinel-${port}.conf`)
  await writeFile(configFile, [
    `sentinel monitor ${name} 127.0.0.1 ${primaryPort} 1`,
    `sentinel down-after-milliseconds ${name} ${options.downAfterMs ?? 1500}`,
    `sentinel failover-timeout ${name} 2000`,
    ''
  ].join('\n'))
  const sentinel = new OwnRedis(port, ['--sentinel'], configFile)
  t.teardown(async () => { await sentinel.stop() })
  await sentinel.start()
  await until('the sentinel to see the replica', async () => {
    const replicas = await redisCommand(sentinel.url, 'SENTINEL', 'REPLICAS', name) as unknown[]
    return replicas.length === 1
  })
  return { sentinels: `127.0.0.1:${port}`, primary, replica, sentinel, proxy }
}

/**
 * What every Redis shape must do as one node does (the app runs with REFRESH_REUSE_GRACE=0):
 * each subject's refresh rotates, a replay is reuse and revokes the session; a revoked access
 * token introspects inactive; log-out-everywhere ends a session.
 */
export async function checkRotationAndRevocation (t: Test & Assertions, app: FastifyInstance, subjects: string[]): Promise<void> {
  t.same((await app.inject({ method: 'GET', url: '/health/ready' })).json(), { status: 'ok', store: 'redis' }, 'ready, on Redis')
  for (const sub of subjects) {
    const pair = await issue(app, { sub })
    const rotated = await refreshWith(app, pair.refresh_token)
    t.equal(rotated.statusCode, 200, `${sub}: refresh`)
    t.equal((await refreshWith(app, pair.refresh_token)).json().code, 'token_reused', `${sub}: reuse is detected`)
    t.equal((await refreshWith(app, rotated.json<Pair>().refresh_token)).json().code, 'token_revoked', `${sub}: and revokes the session`)
  }
  const revoked = await issue(app, { sub: 'revoked-access' })
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: revoked.access_token } })
  t.same(await introspectToken(app, revoked.access_token), { active: false }, 'a revoked access token is inactive')
  const everywhere = await issue(app, { sub: 'everywhere' })
  await app.inject({ method: 'POST', url: '/v1/subjects/everywhere/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal((await refreshWith(app, everywhere.refresh_token)).json().code, 'token_revoked', 'log out everywhere ends the session')
}

/** The same refresh token sent `count` times at once over real sockets; the statuses, in order. */
export async function refreshAtOnce (base: string, refreshToken: string, count: number): Promise<number[]> {
  return await Promise.all(Array.from({ length: count }, async () => (await fetch(`${base}/v1/tokens/refresh`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: refreshToken })
  })).status))
}

/** Refresh traffic over a real socket: users each refresh in a loop, retrying their own token after a refusal, as a client would. */
export class RefreshTraffic {
  /** How many answers had each status. */
  readonly statuses = new Map<number, number>()
  /** The contract codes of the refusals. */
  readonly codes = new Set<string>()
  private readonly tokens: string[]
  private readonly lastServed: number[]
  /** Users that got an answer a retry cannot change (a 4xx), and stopped. */
  private readonly settled: boolean[]
  private stopped = false
  private readonly loops: Array<Promise<void>>

  constructor (base: string, refreshTokens: string[]) {
    this.tokens = [...refreshTokens]
    this.lastServed = this.tokens.map(() => 0)
    this.settled = this.tokens.map(() => false)
    this.loops = this.tokens.map(async (_, i) => {
      while (!this.stopped) {
        const response = await fetch(`${base}/v1/tokens/refresh`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: this.tokens[i] }), signal: AbortSignal.timeout(5000)
        })
        const body = await response.json() as { refresh_token?: string, code?: string }
        this.statuses.set(response.status, (this.statuses.get(response.status) ?? 0) + 1)
        if (response.status === 200) {
          this.tokens[i] = String(body.refresh_token)
          this.lastServed[i] = Date.now()
        } else {
          this.codes.add(String(body.code))
          // A 4xx will not change on retry (a logged-out user): this user stops, and the test sees why.
          if (response.status < 500) {
            this.settled[i] = true
            break
          }
          await new Promise((resolve) => setTimeout(resolve, 20))
        }
      }
    })
  }

  /** How many users got a 200 after `time` (ms since the epoch), or stopped on a 4xx (for the test to report). */
  servedSince (time: number): number {
    return this.lastServed.filter((served, i) => served > time || this.settled[i]).length
  }

  get users (): number {
    return this.tokens.length
  }

  async stop (): Promise<void> {
    this.stopped = true
    await Promise.all(this.loops)
  }
}

/** Polls until `check` holds (or throws past the deadline): for states reached asynchronously. */
export async function until (what: string, check: () => Promise<boolean>, withinMs = 10_000): Promise<void> {
  const deadline = Date.now() + withinMs
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** Runs one command on one redis-server with a throwaway connection. */
export async function redisCommand (url: string, command: string, ...args: Array<string | number>): Promise<unknown> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  client.on('error', () => {})
  try {
    await client.connect()
    return await client.call(command, ...args)
  } finally {
    client.disconnect()
  }
}

async function run (command: string, args: string[]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'ignore' })
    child.on('exit', (code) => { code === 0 ? resolve() : reject(new Error(`${command} ${args.join(' ')} exited ${String(code)}`)) })
  })
}

export interface OwnCluster {
  /** The seeds, as REDIS_CLUSTER_NODES takes them. */
  nodes: string
  servers: OwnRedis[]
}

/**
 * A Redis Cluster of the test's own: `masters` redis-servers with --cluster-enabled on free
 * ports (and `replicas` per master), joined by `redis-cli --cluster create`, each stopped by PID
 * at teardown. A short node timeout makes failover quick.
 */
export async function startCluster (t: Test & { testdir: () => string }, options: { masters?: number, replicas?: number, nodeTimeoutMs?: number } = {}): Promise<OwnCluster> {
  const { masters = 3, replicas = 0, nodeTimeoutMs = 2000 } = options
  const dir = t.testdir()
  const servers: OwnRedis[] = []
  for (let i = 0; i < masters * (1 + replicas); i++) {
    const port = await freePort()
    servers.push(new OwnRedis(port, ['--cluster-enabled', 'yes', '--cluster-config-file', `${dir}/nodes-${port}.conf`, '--cluster-node-timeout', String(nodeTimeoutMs), '--repl-diskless-sync-delay', '0']))
  }
  t.teardown(async () => { for (const server of servers) await server.stop() })
  await Promise.all(servers.map(async (server) => { await server.start() }))
  const addresses = servers.map((server) => `127.0.0.1:${server.port}`)
  await run('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', String(replicas), '--cluster-yes'])
  // Usable once every node agrees that all slots are served, and every replica has its copy.
  for (const server of servers) {
    await until('the cluster to be ready', async () => {
      const info = await redisCommand(server.url, 'CLUSTER', 'INFO') as string
      const role = await redisCommand(server.url, 'INFO', 'replication') as string
      return info.includes('cluster_state:ok') && (role.includes('role:master') || role.includes('master_link_status:up'))
    })
  }
  // And every node knows every shard's replicas (CLUSTER SLOTS lists them once gossip has spread).
  for (const server of servers) {
    await until('every node to know the replicas', async () => {
      const slots = await redisCommand(server.url, 'CLUSTER', 'SLOTS') as unknown[][]
      return slots.length === masters && slots.every((range) => range.length >= 3 + replicas)
    })
  }
  return { nodes: addresses.join(','), servers }
}

/**
 * A TCP proxy in front of a server of the tests' own, for network faults no process can fake:
 * `partition()` drops every byte both ways on every connection, old and new, and closes nothing
 * (a cut link); `silenceExisting()` does that to the connections open now only, while new ones
 * work (a firewall or NAT that lost their state: no FIN, no RST, ever); `heal()` ends either,
 * dropping the connections whose streams lost bytes. `delay(ms)` holds every chunk that long
 * each way (a slow link; bytes stay in order, and reach the server even if the client closed
 * meanwhile); `resetAfterReplyTo(text)` lets the next request
 * containing `text` through, then drops its reply and resets the connection (a reply lost after
 * the server acted on the request).
 */
export class TcpProxy {
  /** Connections ever made through the proxy. */
  accepted = 0
  private partitioned = false
  private delayMs = 0
  private resetAfter: string | null = null
  private readonly resetting = new WeakSet<Socket>()
  private readonly silenced = new WeakSet<Socket>()
  private readonly sockets = new Set<Socket>()
  private readonly server: Server
  constructor (targetPort: number) {
    this.server = createServer((downstream) => {
      this.accepted++
      const upstream = connect(targetPort, '127.0.0.1')
      for (const socket of [downstream, upstream]) {
        this.sockets.add(socket)
        socket.on('error', () => {})
        socket.on('close', () => { this.sockets.delete(socket) })
      }
      downstream.on('data', (data: Buffer) => {
        if (this.resetAfter !== null && data.includes(this.resetAfter)) {
          this.resetAfter = null
          this.resetting.add(downstream)
        }
        this.relay(downstream, upstream, data)
      })
      upstream.on('data', (data: Buffer) => {
        if (!this.resetting.has(downstream)) return this.relay(downstream, downstream, data)
        downstream.resetAndDestroy()
        upstream.destroy()
      })
      // With a delay, what the client sent before it closed still reaches the server (as bytes in
      // flight do), and only then is the server's side closed.
      downstream.on('close', () => {
        if (this.delayMs === 0) upstream.destroy()
        else setTimeout(() => upstream.destroy(), this.delayMs + 100)
      })
      upstream.on('close', () => downstream.destroy())
    })
  }

  async listen (): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve))
    return (this.server.address() as AddressInfo).port
  }

  /** Connections currently open through the proxy (each counted once, by its client side). */
  get connections (): number {
    return this.sockets.size / 2
  }

  partition (): void { this.partitioned = true }

  delay (ms: number): void { this.delayMs = ms }

  resetAfterReplyTo (text: string): void { this.resetAfter = text }

  silenceExisting (): void {
    for (const socket of this.sockets) this.silenced.add(socket)
  }

  heal (): void {
    this.partitioned = false
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
  }

  close (): void {
    this.heal()
    this.server.close()
  }

  private forwards (downstream: Socket): boolean {
    return !this.partitioned && !this.silenced.has(downstream)
  }

  /** Passes a chunk of `downstream`'s connection on to `to`, after the delay if there is one. */
  private relay (downstream: Socket, to: Socket, data: Buffer): void {
    const send = (): void => { if (this.forwards(downstream) && !to.destroyed) to.write(data) }
    if (this.delayMs === 0) send()
    else setTimeout(send, this.delayMs)
  }
}
