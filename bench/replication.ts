import type { Redis } from 'ioredis'
import { OwnRedis } from '../test/support/redis.js'
import { until } from '../test/support/wait.js'
import { connectRedis } from './redis.js'

/**
 * The bench's own redis-servers for `--replication`: a lone one (the reference), and a primary with
 * one replica. Never the machine's shared Redis: these are the tests' throwaway servers
 * (test/support/redis.ts: free ports of the loopback, folders of their own, stopped by their PID),
 * stopped on every exit path the bench survives (killAllRedisServers).
 */

/** SIGKILLs every redis-server this bench started and removes their folders. Synchronous: safe in process.on('exit'). */
export function killAllRedisServers (): void {
  OwnRedis.killAll()
}

/** One redis-server of the bench's own. `client`: the bench's connection to it (INFO, CONFIG, counting, cleanup). */
export class BenchRedis {
  readonly port: number
  readonly url: string
  readonly client: Redis
  private readonly server: OwnRedis

  get pid (): number {
    return this.server.pid ?? -1
  }

  private constructor (server: OwnRedis, client: Redis) {
    this.server = server
    this.port = server.port
    this.url = server.url
    this.client = client
  }

  /** Starts `redis-server` (from PATH) on a free port, no persistence; a replica's first sync at once. */
  static async start (extraArgs: string[] = []): Promise<BenchRedis> {
    const server = await OwnRedis.onFreePort(['--repl-diskless-sync-delay', '0', ...extraArgs])
    try {
      return new BenchRedis(server, await connectRedis(server.url))
    } catch (error) {
      await server.stop()
      throw error
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

  /** Stops it by its PID (SIGKILL: nothing to save) and removes its folder. */
  async stop (): Promise<void> {
    this.client.disconnect()
    await this.server.stop()
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
