import type { FastifyBaseLogger } from 'fastify'
import { Cluster } from 'ioredis'
import keySlot from 'cluster-key-slot'
import { StoreUnavailableError } from '../errors.js'
import { SILENCE_CHECK_MS, type RedisClient, type RedisHealth } from '../redis.js'

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

/** KEYS: one slot's marker. Answers {its epoch, or '' when missing; its remaining life (ms)}. */
const READ = `
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {'', -2} end
return {epoch, redis.call('PTTL', KEYS[1])}
`

/** What reading the marker found: the store's epoch (ms), and whether the marker had to be written. */
interface Reading { created: boolean, epochMs: number }

/** Where the marker lives: one key, or one per Cluster slot. */
interface Markers { read: (sinceMs: number) => Promise<Reading> }

/** One key (a single node, or a primary behind Sentinel): read, kept alive or written in one step. */
class OneMarker implements Markers {
  private readonly client: RedisClient
  private readonly key: string
  private readonly lifeMs: number
  constructor (client: RedisClient, key: string, lifeMs: number) {
    this.client = client
    this.key = key
    this.lifeMs = lifeMs
    client.defineCommand('rotorStoreEpoch', { numberOfKeys: 1, lua: CHECK })
  }

  async read (sinceMs: number): Promise<Reading> {
    const send = (this.client as unknown as { rotorStoreEpoch: (...args: Array<string | number>) => Promise<[number, string]> }).rotorStoreEpoch
    const [created, epoch] = await send.call(this.client, this.key, sinceMs, this.lifeMs)
    return { created: created === 1, epochMs: Number(epoch) }
  }
}

const SLOTS = 16_384
/** Every MARKED_EVERYth slot holds a marker: 1,024 keys, each one command when written. */
const MARKED_EVERY = 16
let slotTags: string[] | null = null

/**
 * A hash tag for every Cluster slot: the first base-36 number that hashes there (computed once,
 * ~20 ms); '' for the slots that hold no marker.
 */
function tagsBySlot (): string[] {
  if (slotTags === null) {
    const tags = new Array<string>(SLOTS).fill('')
    for (let n = 0, left = SLOTS / MARKED_EVERY; left > 0; n++) {
      const tag = n.toString(36)
      const slot = keySlot(tag)
      if (slot % MARKED_EVERY === 0 && tags[slot] === '') {
        tags[slot] = tag
        left--
      }
    }
    slotTags = tags
  }
  return slotTags
}

/**
 * On a Cluster, a shard can lose its data alone (a primary restarted empty): every 16th slot holds
 * a marker (`<key>:{<tag>}`, 1,024 keys, ~100 KB in all), and each check reads one marked slot of
 * every primary. A slot moved by resharding takes its marker along, so any marked slot of a
 * primary will do; a primary that holds no marked slot (fewer than 16 slots in a row) is not
 * watched. (One marker for every slot, 16,384 commands at each write, timed out on a busy machine.)
 * Markers are written together and kept alive together, when the ones read have half their life left.
 */
class SlotMarkers implements Markers {
  private readonly client: Cluster
  /** The markers, and the marker of each slot ('' where it has none). */
  private readonly keys: string[]
  private readonly keyBySlot: string[]
  private readonly lifeMs: number
  /** Below this much life left, every marker is kept alive again: half their life, and never so
   * close to the end that the checks (every SILENCE_CHECK_MS) could miss the moment. */
  private readonly extendBelowMs: number
  constructor (client: Cluster, key: string, lifeMs: number) {
    this.client = client
    this.keyBySlot = tagsBySlot().map((tag) => tag === '' ? '' : `${key}:{${tag}}`)
    this.keys = this.keyBySlot.filter((marker) => marker !== '')
    this.lifeMs = lifeMs
    this.extendBelowMs = Math.max(lifeMs / 2, 3 * SILENCE_CHECK_MS)
    client.defineCommand('rotorReadMarker', { numberOfKeys: 1, lua: READ })
  }

  async read (sinceMs: number): Promise<Reading> {
    const keys = this.representatives()
    const found = await this.readAll(keys)
    // A shard without markers: a new store, or one that lost its data. Written where missing only
    // (another instance may be writing too), then read again: the newest epoch of any shard is the store's.
    const created = found.some(([epoch]) => epoch === '')
    if (created) await Promise.all(this.keys.map(async (key) => await this.client.set(key, sinceMs, 'PX', this.lifeMs, 'NX')))
    const markers = created ? await this.readAll(keys) : found
    if (markers.some(([, ttl]) => ttl < this.extendBelowMs)) this.extendAll()
    return { created, epochMs: Math.max(...markers.map(([epoch]) => Number(epoch))) }
  }

  /** The marker of the lowest marked slot of every primary (none while the slots are not known yet). */
  private representatives (): string[] {
    const primaries = new Map<string, string>()
    this.keyBySlot.forEach((key, slot) => {
      const primary = this.client.slots[slot]?.[0]
      if (key !== '' && primary !== undefined && !primaries.has(primary)) primaries.set(primary, key)
    })
    if (primaries.size === 0) throw new Error('the Cluster\'s slots are not known yet')
    return [...primaries.values()]
  }

  private async readAll (keys: string[]): Promise<Array<[string, number]>> {
    const send = (this.client as unknown as { rotorReadMarker: (key: string) => Promise<[string, number]> }).rotorReadMarker
    return await Promise.all(keys.map(async (key) => await send.call(this.client, key)))
  }

  private extendAll (): void {
    // Not awaited; a failure is tried again at the next check.
    Promise.all(this.keys.map(async (key) => await this.client.pexpire(key, this.lifeMs))).catch(() => {})
  }
}

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
  private readonly markers: Markers
  private readonly log: FastifyBaseLogger
  private readonly onLoss: () => void
  private readonly health: RedisHealth
  /** When this process started: a marker it writes first dates from then (see check). */
  private readonly startedMs = Date.now()

  constructor (client: RedisClient, key: string, lifeMs: number, log: FastifyBaseLogger, health: RedisHealth, onLoss: () => void) {
    this.health = health
    this.markers = client instanceof Cluster ? new SlotMarkers(client, key, lifeMs) : new OneMarker(client, key, lifeMs)
    this.log = log
    this.onLoss = onLoss
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
    const since = this.seenMs === null ? this.startedMs : Date.now()
    let reading: Reading
    try {
      reading = await this.markers.read(since)
    } catch (error) {
      // Kept for the 503's log line while the epoch is unknown; a known epoch stays known, and
      // the next check tells (on a Cluster, one shard down must not stop the others).
      this.failure = (error as Error).message
      if (this.epochMs === null) this.health.down(this.failure)
      return
    }
    const { created, epochMs } = reading
    if (created) {
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
