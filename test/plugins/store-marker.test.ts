import { test } from 'tap'
import { pino } from 'pino'
import { Cluster, Redis } from 'ioredis'
import { StoreUnavailableError } from '../../plugins/errors.js'
import { RedisHealth } from '../../plugins/redis.js'
import { StoreMarker } from '../../plugins/store/marker.js'
import { LogCapture } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { freePort } from '../support/net.js'

// The store marker's own decisions, on clients built by hand: what a failed read does to an epoch
// already known and to one not known yet. (Losses themselves: test/issues/12-store-loss.test.ts.)

const LIFE_MS = 60_000

function markerOn (client: Redis | Cluster, logs: LogCapture): StoreMarker {
  const log = pino({ level: 'info' }, logs)
  return new StoreMarker(client, 'rotor-test:marker:store:epoch', LIFE_MS, log, new RedisHealth(log), () => {})
}

/** Why the epoch cannot be given (the StoreUnavailableError's reason), or null when it can. */
function reasonOf (marker: StoreMarker): string | null {
  try {
    marker.epoch()
    return null
  } catch (error) {
    return error instanceof StoreUnavailableError ? error.reason : String(error)
  }
}

test('a failed read keeps the epoch known and the store reachable: the next read tells', async (t) => {
  const redis = await startRedis(t)
  const client = new Redis(redis.url, { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null, lazyConnect: true })
  client.on('error', () => {})
  t.teardown(() => { client.disconnect() })
  await client.connect()
  const logs = new LogCapture()
  const marker = markerOn(client, logs)
  await marker.check()
  const epoch = marker.epoch()
  t.ok(epoch > 0, 'read: the epoch is known')

  await redis.stop()
  await marker.check()
  t.equal(marker.epoch(), epoch, 'a read that failed changes nothing')
  t.notOk(logs.text.includes('store unreachable'), 'and says nothing of its own: the commands that fail do')
})

test('a read that fails before any epoch is known leaves refresh refused with the reason, and says the store is unreachable', async (t) => {
  const client = new Redis(`redis://127.0.0.1:${await freePort()}`, { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null, lazyConnect: true })
  client.on('error', () => {})
  t.teardown(() => { client.disconnect() })
  const logs = new LogCapture()
  const marker = markerOn(client, logs)
  await marker.check()
  t.match(reasonOf(marker), /^Rotor's store marker is not known on this connection: .+/, 'a 503, with the reason in the log line')
  t.ok(logs.lines.some((line) => line['level'] === 50 && String(line['msg']).startsWith('store unreachable')), 'store unreachable, at error level')
})

test('on a Cluster whose slots are not known yet, the epoch stays unknown', async (t) => {
  const client = new Cluster([{ host: '127.0.0.1', port: await freePort() }], { lazyConnect: true, enableOfflineQueue: false, clusterRetryStrategy: () => null })
  client.on('error', () => {})
  t.teardown(() => { client.disconnect() })
  const marker = markerOn(client, new LogCapture())
  await marker.check()
  t.match(reasonOf(marker), /slots are not known yet/)
})
