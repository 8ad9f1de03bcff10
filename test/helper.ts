import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createServer } from 'node:net'
import { Writable } from 'node:stream'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../src/app.js'
import { loadConfig, type Config } from '../src/config.js'

/** The tap test object, as much of it as the helpers use. */
export interface Test {
  teardown: (fn: () => unknown) => void
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
  private readonly args: string[]
  constructor (port: number, args: string[] = []) {
    this.port = port
    this.args = args
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  async start (): Promise<void> {
    this.process = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...this.args], { stdio: 'ignore' })
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
 * A Redis Cluster of the test's own: `masters` redis-servers with --cluster-enabled on free
 * ports, joined by `redis-cli --cluster create`, each stopped by PID at teardown.
 */
export async function startCluster (t: Test & { testdir: () => string }, masters = 3): Promise<{ nodes: string, servers: OwnRedis[] }> {
  const dir = t.testdir()
  const servers: OwnRedis[] = []
  for (let i = 0; i < masters; i++) {
    const port = await freePort()
    servers.push(new OwnRedis(port, ['--cluster-enabled', 'yes', '--cluster-config-file', `${dir}/nodes-${port}.conf`, '--cluster-node-timeout', '2000']))
  }
  t.teardown(async () => { for (const server of servers) await server.stop() })
  for (const server of servers) await server.start()
  const addresses = servers.map((server) => `127.0.0.1:${server.port}`)
  await new Promise<void>((resolve, reject) => {
    const create = spawn('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-yes'], { stdio: 'ignore' })
    create.on('exit', (code) => { code === 0 ? resolve() : reject(new Error(`redis-cli --cluster create exited ${String(code)}`)) })
  })
  // The cluster is usable once every node agrees that all slots are served.
  const probe = new Redis(servers[0]?.url ?? '', { lazyConnect: true })
  probe.on('error', () => {})
  await probe.connect()
  const deadline = Date.now() + 10_000
  while (!(await probe.cluster('INFO') as string).includes('cluster_state:ok')) {
    if (Date.now() > deadline) throw new Error('the cluster did not become ready')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  probe.disconnect()
  return { nodes: addresses.join(','), servers }
}
