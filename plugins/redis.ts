import fp from 'fastify-plugin'
import { Redis, Cluster, type Command, type RedisOptions } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import type { Config, RedisSetting } from './config.js'
import { StartupError } from './errors.js'
import keySlot from 'cluster-key-slot'

export type RedisClient = Redis | Cluster

/**
 * Fail fast: with no offline queue a command against a Redis that is down is refused at once,
 * and one that is sent but never answered is cut off by `commandTimeout`, so a request waits for
 * about a second at most before it gets its 503. Reconnection goes on forever in the background.
 */
export const COMMAND_TIMEOUT_MS = 1000

function failFast (commandTimeout: number) {
  return {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout,
    connectTimeout: 1000,
    autoResendUnfulfilledCommands: false,
    disconnectTimeout: 100,
    retryStrategy: (times: number) => Math.min(times * 50, 500),
    // A primary demoted to replica (a failover it missed) refuses writes: reconnect, and a
    // sentinel client asks the sentinels again for the primary. The failed command gets its 503.
    reconnectOnError: (error: Error) => error.message.startsWith('READONLY'),
    // TCP keepalive after 5 s idle: the kernel notices a peer that vanished with the network
    // (how soon depends on its probe settings). recycleWhenSilent covers the rest.
    keepAlive: 5000,
    // No enableAutoPipelining: it halves Redis's CPU per request, but commands queue behind a
    // pipeline in flight, so against a hung Redis a request waits for two timeouts, not one
    // (tests/store-faults saw a 503 after 2.03 s, past the 2-second promise).
    lazyConnect: true
  } satisfies RedisOptions
}

/**
 * Items in groups one script may take, by their keys: all together in their order, or on a
 * Cluster one group per hash slot (a script's keys must share one).
 */
export function groupBySlot<T> (items: T[], keyOf: (item: T) => string, cluster: boolean): T[][] {
  if (!cluster) return [items]
  const groups = new Map<number, T[]>()
  for (const item of items) {
    const slot = keySlot(keyOf(item))
    const group = groups.get(slot)
    if (group === undefined) groups.set(slot, [item])
    else group.push(item)
  }
  return [...groups.values()]
}

/**
 * How long past a command's deadline Rotor may have been away (its event loop stalled by a long
 * GC pause, or the process starved of CPU on a busy host) and still count as having listened for
 * Redis's answer. Away longer, the command gets this long again, once, with Rotor listening.
 */
const AWAY_MS = 100

/** What of an ioredis Command its timeout uses; the timer is kept where ioredis keeps its own (its `_clearTimers` clears it with the answer). */
interface TimedCommand {
  isSettled: boolean
  reject: (error: Error) => void
  setTimeout: (this: TimedCommand, ms: number) => void
  _commandTimeoutTimer?: NodeJS.Timeout
}

/**
 * ioredis's `Command.setTimeout`, deciding after the socket was read. Node runs due timers before
 * it reads sockets, so after a stall past the deadline ioredis's timer fired with Redis's answer
 * unread in the socket: a 503 for an answer Rotor had, or a healthy connection recycled for a PING
 * it did not read. Here the timer only looks once the loop has polled (setImmediate); a command
 * still unanswered then times out, unless Rotor was away at the deadline: a command that left late
 * (a stall before its write) gets AWAY_MS more. Against a Redis that says nothing, a request still
 * waits the timeout, plus the stall, plus AWAY_MS at most.
 */
function setTimeoutAfterPoll (this: TimedCommand, ms: number): void {
  this._commandTimeoutTimer ??= setTimeout(lookAfterPoll, ms, this, performance.now() + ms, true)
}

function lookAfterPoll (command: TimedCommand, due: number, mayWait: boolean): void {
  setImmediate(decide, command, due, mayWait)
}

function decide (command: TimedCommand, due: number, mayWait: boolean): void {
  if (command.isSettled) return
  if (mayWait && performance.now() - due > AWAY_MS) {
    command._commandTimeoutTimer = setTimeout(lookAfterPoll, AWAY_MS, command, performance.now() + AWAY_MS, false)
    return
  }
  command.reject(new Error('Command timed out'))
}

const patched = new WeakSet<RedisClient>()

/** Makes a client's commands time out by setTimeoutAfterPoll (once per client; a Cluster's commands, whichever node they go to). */
function readsBeforeTimingOut<C extends RedisClient> (client: C): C {
  if (patched.has(client)) return client
  patched.add(client)
  // Named parameters, not a rest array: this runs for every command. (A Cluster's third is the node.)
  const send = client.sendCommand.bind(client) as (command: Command, stream?: unknown, node?: unknown) => unknown
  client.sendCommand = (command: Command, stream?: unknown, node?: unknown) => {
    (command as unknown as TimedCommand).setTimeout = setTimeoutAfterPoll
    return send(command, stream, node)
  }
  return client
}

/** How often a client's connection is checked for silence (a PING that must answer in time). */
export const SILENCE_CHECK_MS = 2000

/**
 * Replaces a connection that looks open but carries nothing back (a firewall or NAT that lost its
 * state: no FIN, no RST, until the kernel gives up ~15 min later) when one of its commands timed
 * out: a new connection would work. Through Sentinel, the new connection goes to whichever
 * primary the sentinels name. A Cluster client's error does not say which node's link went
 * silent: each connected primary is asked (recycleSilentNodes).
 */
export function recycleIfSilent (client: RedisClient, error: unknown): void {
  if (!isTimeout(error)) return
  if (client instanceof Cluster) recycleSilentNodes(client)
  else recycle(client)
}

/** Connections already being replaced: the commands that timed out together on one recycle it once. */
const recycling = new WeakSet<object>()

function recycle (client: Redis): void {
  const socket = client.stream
  // The status stays 'ready' until the socket has closed; each disconnect would add a listener to it.
  if (client.status !== 'ready' || recycling.has(socket)) return
  recycling.add(socket)
  client.disconnect(true)
}

/**
 * Checks the connection every SILENCE_CHECK_MS with a PING (a Cluster client: every connected
 * primary), and recycles it when that times out: a client nobody is using (the rate limiter's
 * between requests, or any at 3 a.m.) is found out too. Returns the function that stops it.
 */
export function recycleWhenSilent (client: RedisClient): () => void {
  // Every command times out within SILENCE_CHECK_MS, so one PING is over before the next.
  const timer = setInterval(() => {
    if (client instanceof Cluster) recycleSilentNodes(client)
    else if (client.status === 'ready') client.ping().catch((error: unknown) => { recycleIfSilent(client, error) })
  }, SILENCE_CHECK_MS)
  timer.unref()
  return () => { clearInterval(timer) }
}

const checking = new WeakSet<Cluster>()

/**
 * Pings every connected primary of a Cluster (one round at a time) and drops the connection of
 * each that does not answer in time: ioredis connects anew on the next command for its slots.
 * Connections still connecting (a primary that is down) are left to ioredis and the failover.
 */
function recycleSilentNodes (cluster: Cluster): void {
  if (checking.has(cluster)) return
  checking.add(cluster)
  const connected = cluster.nodes('master').filter((node) => node.status === 'ready').map(readsBeforeTimingOut)
  Promise.all(connected.map(async (node) => {
    await node.ping().catch((error: unknown) => { if (isTimeout(error) && node.status === 'ready') node.disconnect() })
  })).finally(() => { checking.delete(cluster) }).catch(() => {})
}

function isTimeout (error: unknown): boolean {
  return (error as Error).message === 'Command timed out'
}

/** Policies under which Redis may drop a key before its TTL: a dropped denylist key un-revokes a token. */
export function mayEvict (policy: string): boolean {
  return policy !== 'noeviction'
}

/**
 * Makes the commands a client sends within one turn of the event loop leave in one write: the
 * first corks the connection, and it is uncorked once the turn's I/O callbacks have run
 * (setImmediate). Each command keeps its own timeout and answer, unlike ioredis's auto-pipelining,
 * where a command waits behind the pipeline in flight. Under load one write system call carried
 * a refresh's rotation alone and cost more than the rest of the refresh's Redis work together.
 * (Sending the turn's rate-limit batch in the same turn rather than the next, measured A/B, was
 * no faster: 0.97–1.00× the req/s.)
 */
function coalesced (client: Redis): Redis {
  coalesceWrites(client)
  return client
}

function coalesceWrites (client: Redis): void {
  let corked: Redis['stream'] | null = null
  const send = client.sendCommand.bind(client)
  client.sendCommand = (command, stream) => {
    const socket = client.stream
    if (stream === undefined && corked !== socket && socket?.writable === true) {
      corked = socket
      socket.cork()
      setImmediate(() => {
        corked = null
        socket.uncork()
      })
    }
    return send(command, stream)
  }
}

/**
 * A client of Rotor's Redis. On one Redis or behind sentinels its commands of a turn leave in one
 * write (coalesceWrites). No ioredis auto-pipelining, on either connection: commands would queue
 * behind a pipeline in flight (two timeouts against a hung Redis, see failFast), and each turn's
 * commands built a Pipeline object, which copies every defined script onto itself: on the side
 * connection, which had it, a tenth of a refresh's CPU went there. Not on a Cluster either: there
 * ioredis holds auto-pipelined commands, with no timeout, while it has no slot map (as during a
 * failover), so a refresh waited for the failover in the rate limiter instead of answering 503
 * (the Cluster failover test caught it, under load).
 */
export function createRedisClient (setting: Exclude<RedisSetting, { kind: 'memory' }>, commandTimeout = COMMAND_TIMEOUT_MS): RedisClient {
  const options = failFast(commandTimeout)
  switch (setting.kind) {
    case 'single':
      return readsBeforeTimingOut(coalesced(new Redis(setting.url, options)))
    case 'sentinel':
      return readsBeforeTimingOut(coalesced(new Redis({ ...options, sentinels: setting.sentinels, name: setting.name })))
    case 'cluster':
      return readsBeforeTimingOut(new Cluster(setting.nodes, {
        enableOfflineQueue: false,
        lazyConnect: true,
        clusterRetryStrategy: (times: number) => Math.min(times * 50, 500),
        redisOptions: options
      }))
  }
}

/** The side connection's command timeout: what a user of it waits at most before going on without Redis. */
export const SIDE_COMMAND_TIMEOUT_MS = 250

/** Tracks whether Redis answers, and says so in the log once per change, not once per request. */
export class RedisHealth {
  reachable = false
  private reported: boolean | null = null
  private confirming = true
  private full = false
  private readonly log: FastifyBaseLogger
  constructor (log: FastifyBaseLogger) {
    this.log = log
  }

  up (): void {
    this.reachable = true
    if (this.reported !== true) this.log.info('store reachable: Redis is ready')
    this.reported = true
  }

  down (reason: string): void {
    this.reachable = false
    if (this.reported !== false) {
      this.log.error({ reason }, 'store unreachable: Redis does not answer; refresh, revoke and introspect answer 503 denylist_unavailable until it is back')
    }
    this.reported = false
  }

  /**
   * Whether Redis refuses writes for want of memory (maxmemory under noeviction): it answers, so
   * readiness stays 200 (issuing needs no store, and every instance shares the one Redis), but
   * refresh and revoke answer 503 until it has room. Said once per change, as for replicas.
   */
  outOfMemory (full: boolean, detail: string): void {
    if (full === this.full) return
    this.full = full
    if (full) this.log.error({ reason: detail }, 'store full: Redis refuses writes (maxmemory reached under noeviction); refresh and revoke answer 503 denylist_unavailable until it has room: raise maxmemory')
    else this.log.info('store writable again: Redis accepts denylist writes')
  }

  /** Whether replicas confirm denylist writes (REDIS_WAIT_REPLICAS); said once per change. */
  replicas (confirming: boolean, detail: string): void {
    if (confirming === this.confirming) return
    this.confirming = confirming
    if (confirming) this.log.info('store durable again: Redis replicas confirm denylist writes')
    else this.log.error({ reason: detail }, 'store not durable: Redis replicas do not confirm denylist writes (REDIS_WAIT_REPLICAS); refresh and revoke answer 503 denylist_unavailable until they do')
  }
}

/** Says whether Redis's eviction policy may drop revocations; false when CONFIG cannot be read. */
async function checkEvictionPolicy (client: RedisClient, log: FastifyBaseLogger, isProduction: boolean): Promise<boolean> {
  let policy: string | undefined
  try {
    const reply = await client.config('GET', 'maxmemory-policy') as unknown as string[]
    policy = reply[1]
  } catch {
    log.warn('could not read Redis maxmemory-policy (CONFIG disabled?): make sure it is noeviction, or revoked tokens may come back to life when Redis is full')
    return false
  }
  if (policy !== undefined && mayEvict(policy)) {
    log.error({ policy }, `Redis maxmemory-policy is ${policy}: Redis may evict denylist keys and silently un-revoke tokens; set maxmemory-policy noeviction`)
    if (isProduction) throw new StartupError(`refusing to start in production with Redis maxmemory-policy ${policy} (set noeviction)`)
  }
  return true
}

/**
 * A Redis that keeps nothing on disk loses every revocation when it restarts. Rotor notices (its
 * marker is gone) and refuses the older refresh tokens, which signs every user out: in
 * production, say so at start (only where CONFIG answers: checkEvictionPolicy warned otherwise).
 */
async function checkPersistence (client: RedisClient, log: FastifyBaseLogger): Promise<void> {
  const [aof, rdb] = await Promise.all([client.config('GET', 'appendonly'), client.config('GET', 'save')]) as unknown as string[][]
  if (aof?.[1] === 'no' && rdb?.[1] === '') {
    log.warn('Redis keeps nothing on disk (appendonly no, save ""): a restart loses every rotation and revocation; Rotor will then refuse refresh tokens minted before it (STORE_LOSS=refuse) and users sign in again. Turn on AOF (appendonly yes) or RDB snapshots')
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The Redis client, or null when Rotor runs with its in-process store. */
    redis: RedisClient | null
    redisHealth: RedisHealth | null
    /**
     * The side connection to the same Redis, for users that give up sooner than the store and go
     * on without Redis rather than answer 503 (the rate limiter; the session index at issuance):
     * SIDE_COMMAND_TIMEOUT_MS, auto-pipelined. Opened at the first call, shared after; null when
     * there is no Redis. It waits for the connection as the store's does, is watched for silence,
     * and is closed with the app. Its errors are not reported: the store's own connection says how
     * Redis is.
     */
    sideRedis: (() => Promise<RedisClient>) | null
  }
}

/** How long the start waits for Redis before going on not-ready. */
const CONNECT_WAIT_MS = 2000

async function notBefore (ms: number, reason: string): Promise<never> {
  await new Promise((resolve) => setTimeout(resolve, ms).unref())
  throw new Error(reason)
}

export default fp(async function redisPlugin (app, opts: { config: Config }) {
  const { config } = opts
  const setting = config.redis
  if (setting.kind === 'memory') {
    app.decorate('redis', null)
    app.decorate('redisHealth', null)
    app.decorate('sideRedis', null)
    return
  }
  const client = createRedisClient(setting)
  const health = new RedisHealth(app.log)
  let started = false
  client.on('ready', () => {
    health.up()
    // Redis may come back with another configuration: check again on every (re)connection.
    if (started) checkEvictionPolicy(client, app.log, false).catch(() => {})
  })
  client.on('error', (error: Error) => { health.down(error.message) })
  client.on('close', () => { health.down('connection closed') })
  app.decorate<RedisClient | null>('redis', client)
  app.decorate<RedisHealth | null>('redisHealth', health)
  let side: Promise<RedisClient> | null = null
  const openSide = async (): Promise<RedisClient> => {
    const other = createRedisClient(setting, SIDE_COMMAND_TIMEOUT_MS)
    other.on('error', () => {})
    const stopWatching = recycleWhenSilent(other)
    app.addHook('onClose', async () => {
      stopWatching()
      other.disconnect()
    })
    // Not there yet (a sidecar starting first): its users go on without it until it is.
    await Promise.race([other.connect().catch(() => {}), new Promise((resolve) => setTimeout(resolve, CONNECT_WAIT_MS).unref())])
    return other
  }
  app.decorate('sideRedis', async function sideRedis () {
    side ??= openSide()
    return await side
  })

  // A sidecar may start before its Redis: give it a moment, then go on not-ready and keep trying
  // in the background (a cluster or sentinel client may neither connect nor fail for a while).
  try {
    await Promise.race([client.connect(), notBefore(CONNECT_WAIT_MS, 'Redis did not answer at start')])
    const configReadable = await checkEvictionPolicy(client, app.log, config.isProduction)
    if (configReadable && config.isProduction) await checkPersistence(client, app.log)
  } catch (error) {
    if (error instanceof StartupError) {
      client.disconnect()
      throw error
    }
    health.down((error as Error).message)
  }
  started = true
  const stopWatching = recycleWhenSilent(client)

  app.addHook('onClose', async () => {
    stopWatching()
    client.disconnect()
  })
}, { name: 'redis', fastify: '5.x' })
