import type { FastifyBaseLogger } from 'fastify'
import { StoreUnavailableError } from '../src/errors.js'
import type { RedisClient, RedisHealth } from './redis.js'

/**
 * KEYS: the marker. ARGV: now (ms), its life (ms). The marker holds when this store began: found,
 * it is kept alive; missing, it is written with now. Answers {1 if it was missing, the epoch}.
 */
const CHECK = `
local epoch = redis.call('GET', KEYS[1])
if epoch then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, epoch}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1]}
`

/**
 * Knows whether Redis lost its data (restarted with no persistence, flushed, replaced): a marker of
 * Rotor's own, written when the store is first seen and kept alive as long as any token could be,
 * is read at every (re)connection and every few seconds. Missing where it was seen before, the
 * store lost everything it knew: rotations, revocations, "log out everywhere". Refresh tokens
 * minted before the new epoch can then be refused (STORE_LOSS=refuse).
 *
 * Until the marker has been read on the current connection, the epoch is unknown and refresh
 * answers 503: a token minted before a loss must not slip through in the moment after it.
 */
export class StoreMarker {
  private epochMs: number | null = null
  /** Why the marker could not be read on this connection (a READONLY replica, a timeout). */
  private failure = 'not read yet'
  /** The epoch this process saw last, kept across reconnections: a different one is a loss. */
  private seenMs: number | null = null
  private readonly client: RedisClient
  private readonly key: string
  private readonly lifeMs: number
  private readonly log: FastifyBaseLogger
  private readonly onLoss: () => void
  private readonly health: RedisHealth
  /** When this process started: a marker it writes first dates from then (see check). */
  private readonly startedMs = Date.now()

  constructor (client: RedisClient, key: string, lifeMs: number, log: FastifyBaseLogger, health: RedisHealth, onLoss: () => void) {
    this.health = health
    this.client = client
    this.key = key
    this.lifeMs = lifeMs
    this.log = log
    this.onLoss = onLoss
    client.defineCommand('rotorStoreEpoch', { numberOfKeys: 1, lua: CHECK })
  }

  /** When the store began (ms); throws StoreUnavailableError while that is not known on this connection. */
  epoch (): number {
    if (this.epochMs === null) throw new StoreUnavailableError(`Rotor's store marker is not known on this connection: ${this.failure}`)
    return this.epochMs
  }

  /** The connection is gone: what is behind the next one is unknown until it is read. */
  forget (): void {
    this.epochMs = null
  }

  /**
   * Reads the marker (writing it if missing). A process that never saw one dates a marker it
   * writes from its own start, not from now: the tokens it issued while Redis was not there yet
   * (a sidecar starting first) stay good; older ones, from before a loss, do not.
   */
  async check (): Promise<void> {
    const send = (this.client as unknown as { rotorStoreEpoch: (...args: Array<string | number>) => Promise<[number, string]> }).rotorStoreEpoch
    const since = this.seenMs === null ? this.startedMs : Date.now()
    let created: number
    let epoch: string
    try {
      [created, epoch] = await send.call(this.client, this.key, since, this.lifeMs)
    } catch (error) {
      // Kept for the 503's log line while the epoch is unknown; a known epoch stays known.
      this.failure = (error as Error).message
      this.health.down(this.failure)
      return
    }
    const epochMs = Number(epoch)
    if (created === 1) {
      if (this.seenMs === null) {
        this.log.warn({ epoch: new Date(epochMs).toISOString() }, 'store marker written: a new store, or one that lost its data while no Rotor watched; refresh tokens minted before now are refused (STORE_LOSS)')
      } else {
        this.onLoss()
        this.log.error({ previous: new Date(this.seenMs).toISOString(), epoch: new Date(epochMs).toISOString() }, 'store lost its data: Redis no longer holds Rotor\'s marker, so every rotation and revocation it held is gone; refresh tokens minted before now are refused (STORE_LOSS=refuse: users sign in again)')
      }
    } else if (this.seenMs !== null && epochMs !== this.seenMs) {
      // Another instance found the loss first and wrote the new epoch.
      this.onLoss()
      this.log.error({ previous: new Date(this.seenMs).toISOString(), epoch: new Date(epochMs).toISOString() }, 'store lost its data (another instance saw it first); refresh tokens minted before it are refused (STORE_LOSS=refuse)')
    }
    this.seenMs = epochMs
    this.epochMs = epochMs
  }
}
