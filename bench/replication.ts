import { spawn, type ChildProcess } from 'node:child_process'
import { rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Redis } from 'ioredis'
import { connectRedis } from './redis.js'

/**
 * The bench's own redis-servers for `--replication`: a lone one (the reference), and a primary with
 * one replica. Never the machine's shared Redis: these are spawned here, on free ports of the
 * loopback, and stopped by their PID on every exit path the bench survives (killAllRedisServers).
 */

/** Every redis-server of ours still running, by PID. */
const live = new Map<number, { child: ChildProcess, rdb: string }>()

/** SIGKILLs every redis-server this bench started, by PID, and removes their dump files. Synchronous: safe in process.on('exit'). */
export function killAllRedisServers (): void {
  for (const [pid, { child, rdb }] of live) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    rmSync(rdb, { force: true })
  }
  live.clear()
}

class NoBinaryError extends Error {}

async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => { typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no free port')) })
    })
  })
}

async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

/** Polls `check` every 50 ms until it holds, or throws after `ms`. */
export async function until (what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    let last = ''
    try {
      if (await check()) return
    } catch (error) {
      last = ` (${error instanceof Error ? error.message : String(error)})`
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000} s waiting for ${what}${last}`)
    await sleep(50)
  }
}

/** One redis-server of the bench's own. `client`: the bench's connection to it (INFO, CONFIG, counting, cleanup). */
export class BenchRedis {
  readonly port: number
  readonly pid: number
  readonly url: string
  readonly client: Redis
  private readonly child: ChildProcess

  private constructor (port: number, child: ChildProcess, client: Redis) {
    this.port = port
    this.child = child
    this.pid = child.pid ?? -1
    this.url = `redis://127.0.0.1:${port}`
    this.client = client
  }

  /**
   * Spawns `redis-server` (from PATH) on a free port, no persistence, its dump file (a replica
   * writes the one it syncs) `bench-<port>.rdb` in the temporary folder. Retries on another port
   * if the one picked was taken meanwhile.
   */
  static async start (extraArgs: string[] = []): Promise<BenchRedis> {
    let lastError: Error | null = null
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freePort()
      try {
        return await BenchRedis.startOn(port, extraArgs)
      } catch (error) {
        lastError = error instanceof Error ? error : new Error(String(error))
        if (lastError instanceof NoBinaryError) break
      }
    }
    throw lastError ?? new Error('redis-server did not start')
  }

  private static async startOn (port: number, extraArgs: string[]): Promise<BenchRedis> {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--repl-diskless-sync-delay', '0', '--dbfilename', `bench-${port}.rdb`, ...extraArgs]
    const child = spawn('redis-server', args, { cwd: tmpdir(), stdio: ['ignore', 'pipe', 'pipe'] })
    // Its log, drained (a full pipe would block it) and kept short: the reason if it fails to start.
    let log = ''
    const keep = (chunk: Buffer): void => { log = (log + chunk.toString()).slice(-2000) }
    child.stdout?.on('data', keep)
    child.stderr?.on('data', keep)
    const spawned = new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve)
      child.once('error', (error) => { reject(new NoBinaryError(`cannot run redis-server (${error.message}); --replication needs redis-server on PATH`)) })
    })
    await spawned
    if (child.pid === undefined) throw new Error('redis-server has no PID')
    live.set(child.pid, { child, rdb: join(tmpdir(), `bench-${port}.rdb`) })
    child.once('exit', () => { if (child.pid !== undefined) live.delete(child.pid) })
    const url = `redis://127.0.0.1:${port}`
    const deadline = Date.now() + 5000
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`redis-server on port ${port} exited at start (code ${String(child.exitCode)}): ${log.trim().split('\n').slice(-3).join(' | ')}`)
      }
      try {
        const client = await connectRedis(url)
        try {
          await client.ping()
          return new BenchRedis(port, child, client)
        } catch (error) {
          client.disconnect()
          throw error
        }
      } catch (error) {
        if (Date.now() > deadline) {
          if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL')
          throw new Error(`redis-server on port ${port} did not answer within 5 s (${error instanceof Error ? error.message : String(error)})`)
        }
        await sleep(50)
      }
    }
  }

  async info (section: string): Promise<Record<string, string>> {
    const text = await this.client.info(section)
    const fields: Record<string, string> = {}
    for (const line of text.split('\r\n')) {
      const at = line.indexOf(':')
      if (at > 0) fields[line.slice(0, at)] = line.slice(at + 1)
    }
    return fields
  }

  async configSet (name: string, value: string): Promise<void> {
    await this.client.call('CONFIG', 'SET', name, value)
  }

  async configGet (name: string): Promise<string> {
    const reply = await this.client.call('CONFIG', 'GET', name) as string[]
    return String(reply[1])
  }

  /** Stops it by its PID (SIGKILL: nothing to save) and removes its dump file. */
  async stop (): Promise<void> {
    this.client.disconnect()
    const child = this.child
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      process.kill(this.pid, 'SIGKILL')
      await exited
    }
    live.delete(this.pid)
    rmSync(join(tmpdir(), `bench-${this.port}.rdb`), { force: true })
  }
}

export interface ReplicationState {
  /** The replica's view: master_link_status is up. */
  linkUp: boolean
  /** The primary's view: connected_slaves. */
  connectedReplicas: number
  /**
   * Bytes of the replication stream the primary produced that the replica has not acknowledged yet.
   * A replica acknowledges once a second (and when a WAIT asks), so under load this is rarely 0:
   * it says how much an instant's failover could lose, not how late the replica is.
   */
  lagBytes: number | null
  /** The primary's min_slaves_good_slaves (shown only while min-replicas-to-write is set). */
  goodReplicas: number | null
}

/** A primary with one replica (`--replicaof`), both of the bench's own. */
export class ReplicatedRedis {
  readonly primary: BenchRedis
  readonly replica: BenchRedis

  private constructor (primary: BenchRedis, replica: BenchRedis) {
    this.primary = primary
    this.replica = replica
  }

  /** Starts both and waits until the replica says master_link_status:up (the first sync is done). */
  static async start (): Promise<ReplicatedRedis> {
    const primary = await BenchRedis.start()
    let replica: BenchRedis | null = null
    try {
      replica = await BenchRedis.start(['--replicaof', '127.0.0.1', String(primary.port)])
      const pair = new ReplicatedRedis(primary, replica)
      await until('the replica to sync with its primary (master_link_status:up)', async () => (await pair.state()).linkUp && (await pair.state()).connectedReplicas === 1)
      return pair
    } catch (error) {
      await replica?.stop()
      await primary.stop()
      throw error
    }
  }

  async state (): Promise<ReplicationState> {
    const [primary, replica] = await Promise.all([this.primary.info('replication'), this.replica.info('replication')])
    // slave0:ip=127.0.0.1,port=…,state=online,offset=…,lag=0
    const slave = /offset=(\d+)/.exec(primary['slave0'] ?? '')
    const masterOffset = Number(primary['master_repl_offset'])
    return {
      linkUp: replica['master_link_status'] === 'up',
      connectedReplicas: Number(primary['connected_slaves'] ?? 0),
      lagBytes: slave === null || !Number.isFinite(masterOffset) ? null : Math.max(0, masterOffset - Number(slave[1])),
      goodReplicas: primary['min_slaves_good_slaves'] === undefined ? null : Number(primary['min_slaves_good_slaves'])
    }
  }

  /** Waits until the replica has acknowledged everything the primary sent (between measurements). */
  async caughtUp (ms = 10_000): Promise<void> {
    await until('the replica to catch up with its primary', async () => {
      const state = await this.state()
      return state.linkUp && state.lagBytes === 0
    }, ms)
  }

  async stop (): Promise<void> {
    await this.replica.stop()
    await this.primary.stop()
  }
}
