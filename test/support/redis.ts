// Redis for a test: servers of its own (one, a primary with a replica and a sentinel, a Cluster),
// started on free ports and stopped by PID, and one-off commands and clean-up on any Redis.
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { freePort, TcpProxy } from './net.js'
import type { Test } from './tap.js'
import { until } from './wait.js'

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

/**
 * A throwaway redis-server of the test's (or the bench's) own, for anything that stops, slows or
 * breaks Redis: on a port of its own, in a folder of its own, stopped by its PID.
 */
export class OwnRedis {
  /** Every server started and not yet stopped, with its folder: what {@link OwnRedis.killAll} stops. */
  private static readonly live = new Map<ChildProcess, string>()

  /**
   * SIGKILLs every server still running and removes their folders. Synchronous, so a process's
   * `exit` listener can call it (the bench does, on every way out).
   */
  static killAll (): void {
    for (const [child, dir] of OwnRedis.live) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      rmSync(dir, { recursive: true, force: true })
    }
    OwnRedis.live.clear()
  }

  /** Starts one on a free port; another port if that one was taken meanwhile (twice more at most). */
  static async onFreePort (args: string[] = []): Promise<OwnRedis> {
    for (let attempt = 1; ; attempt++) {
      const redis = new OwnRedis(await freePort(), args)
      try {
        await redis.start()
        return redis
      } catch (error) {
        await redis.stop()
        if (attempt === 3 || error instanceof NoRedisServerError) throw error
      }
    }
  }

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

  /** The server process's id while it runs (for CPU readings, and to say which one it is). */
  get pid (): number | undefined {
    return this.process?.pid
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
    const child = spawn('redis-server', [...this.configFile, '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...logging, ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe'], cwd: this.dir
    })
    this.process = child
    OwnRedis.live.set(child, this.dir)
    // Its output, drained (a full pipe would block it) and kept short: why it did not start, if it does not.
    let output = ''
    const keep = (chunk: Buffer): void => { output = (output + chunk.toString()).slice(-2000) }
    child.stdout.on('data', keep)
    child.stderr.on('data', keep)
    let spawnError: Error | null = null
    child.once('error', (error) => { spawnError = error })
    const client = new Redis(this.url, { lazyConnect: true, retryStrategy: () => 50, maxRetriesPerRequest: 0 })
    client.on('error', () => {})
    const deadline = Date.now() + 5000
    while (Date.now() < deadline) {
      if (spawnError !== null) throw new NoRedisServerError(`cannot run redis-server (${(spawnError as Error).message}): it must be on PATH`)
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`redis-server on port ${this.port} exited at start: ${output.trim().split('\n').slice(-3).join(' | ')}`)
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
    await this.crash()
    if (child !== null) OwnRedis.live.delete(child)
    if (this.dir !== null) rmSync(this.dir, { recursive: true, force: true })
    this.dir = null
  }

  /**
   * Kills it (SIGKILL) but keeps its folder: `start()` brings it back on the same port with what it
   * had made durable there (all of it with `--appendonly yes --appendfsync always`).
   */
  async crash (): Promise<void> {
    const child = this.process
    // Never spawned (no redis-server on PATH), or gone already: nothing to wait for.
    if (child === null || child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGKILL')
    await exited
    this.process = null
  }

  /** Freezes it (SIGSTOP): connections stay open but nothing answers, like a hung server. */
  pause (): void { this.process?.kill('SIGSTOP') }
  resume (): void { this.process?.kill('SIGCONT') }
}

/** redis-server is not on PATH: no other port will help. */
class NoRedisServerError extends Error {}

export async function startRedis (t: Test, args: string[] = []): Promise<OwnRedis> {
  const redis = await OwnRedis.onFreePort(args)
  t.teardown(async () => {
    redis.resume()
    await redis.stop()
  })
  return redis
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
