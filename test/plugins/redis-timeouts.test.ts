import { test } from 'tap'
import type { Command, Redis } from 'ioredis'
import { COMMAND_TIMEOUT_MS, createRedisClient, recycleIfSilent, type RedisClient } from '../../plugins/redis.js'
import { build, issue, LogCapture, REDIS_URL, refreshWith, type Pair } from '../support/app.js'
import { startCluster, startRedis } from '../support/redis.js'
import type { Test } from '../support/tap.js'

// A command's timeout is Redis's silence, not Rotor's: when Rotor's own event loop stalls (a
// long GC, a starved process on a busy host) past a command's timeout, Node runs the due timer
// before it reads the socket where Redis's answer already waits. Rotor must read first: a 503 for
// an answer it had, or a healthy connection recycled for a PING it did not read, is a fault of
// its own making (the browser interop test met one under the full suite).

/** Holds the event loop, as a long GC pause or a descheduled process does. */
function stall (ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

/** One turn of the loop: a command sent now has left by then (writes are uncorked in that turn). */
async function nextTurn (): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve))
}

async function connected (t: Test, client: RedisClient): Promise<RedisClient> {
  t.teardown(() => { client.disconnect() })
  await client.connect()
  return client
}

const STALL_MS = COMMAND_TIMEOUT_MS + 300

test('an answer that arrived while the event loop stalled past the timeout is read, not timed out', async (t) => {
  const client = await connected(t, createRedisClient({ kind: 'single', url: REDIS_URL }))
  const answer = client.ping()
  await nextTurn()
  stall(STALL_MS)
  t.equal(await answer, 'PONG')
  t.equal(client.status, 'ready', 'the connection is kept')
})

test('a command that only left after a stall gets its answer: the timeout does not count the stall', async (t) => {
  const client = await connected(t, createRedisClient({ kind: 'single', url: REDIS_URL }))
  const answer = client.ping()
  stall(STALL_MS)
  t.equal(await answer, 'PONG')
})

test('a Redis that is silent still times the command out, stall or not, in about the timeout', async (t) => {
  const redis = await startRedis(t)
  const client = await connected(t, createRedisClient({ kind: 'single', url: redis.url }))
  redis.pause()
  t.teardown(() => { redis.resume() })

  const started = Date.now()
  await t.rejects(client.ping(), { message: 'Command timed out' }, 'no stall: silent Redis')
  const waited = Date.now() - started
  t.ok(waited >= COMMAND_TIMEOUT_MS && waited < 2 * COMMAND_TIMEOUT_MS, `timed out after ${waited} ms: the timeout, not two`)

  const stalledStart = Date.now()
  const answer = client.ping()
  await nextTurn()
  stall(STALL_MS)
  await t.rejects(answer, { message: 'Command timed out' }, 'stalled, and Redis said nothing: timed out all the same')
  const stalledWait = Date.now() - stalledStart
  t.ok(stalledWait < STALL_MS + COMMAND_TIMEOUT_MS, `given a short grace after the stall, not a second timeout (${stalledWait} ms)`)
})

test('a command answered in time leaves no timer behind', async (t) => {
  const client = await connected(t, createRedisClient({ kind: 'single', url: REDIS_URL }))
  const timers = (): number => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length
  await client.ping()
  const before = timers()
  await Promise.all(Array.from({ length: 200 }, async () => await client.ping()))
  // Other timers of the process may come and go meanwhile; 200 left behind would not.
  t.ok(timers() - before < 10, `every command's timer was cleared with its answer (${timers() - before} more timers)`)
})

test('on a Cluster every node\'s commands read before they time out', async (t) => {
  const cluster = await startCluster(t, { masters: 3 })
  const nodes = cluster.servers.map((server) => ({ host: '127.0.0.1', port: server.port }))
  const client = await connected(t, createRedisClient({ kind: 'cluster', nodes }))
  const keys = ['a', 'b', 'c', 'd', 'e', 'f']
  await Promise.all(keys.map(async (key) => await client.set(`{${key}}rotor-timeouts`, key)))
  const answers = Promise.all(keys.map(async (key) => await client.get(`{${key}}rotor-timeouts`)))
  await nextTurn()
  stall(STALL_MS)
  t.same(await answers, keys, 'each node\'s answer was read, none timed out')
})

test('a rotation that reached Redis past its deadline because Rotor stalled before sending it is sent again, not answered 503', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, {}, logs)
  const pair = await issue(app, { sub: 'stalled' })
  // Rotor stalls right after queuing the rotation, before its write leaves: the script then
  // starts past its deadline (three quarters of the timeout), records nothing and says so.
  const client = app.redis as Redis
  const send = client.sendCommand.bind(client)
  let stalls = 0
  client.sendCommand = (command: Command, ...rest: unknown[]) => {
    const answer = send(command, ...rest as [])
    if (stalls === 0 && command.name.startsWith('eval')) {
      stalls++
      stall(COMMAND_TIMEOUT_MS * 0.9)
    }
    return answer
  }
  const refreshed = await refreshWith(app, pair.refresh_token)
  t.equal(stalls, 1, 'the rotation was held')
  t.equal(refreshed.statusCode, 200, 'rotated: Redis answered before Rotor gave up, and the late script had recorded nothing')
  const next = refreshed.json<Pair>()
  t.equal((await refreshWith(app, next.refresh_token)).statusCode, 200, 'the new refresh token is the session\'s current one')
  t.notOk(logs.lines.some((line) => String(line['msg']).startsWith('store unreachable')), 'Redis answered: not reported unreachable')
})

test('many commands timing out at once on a silent connection recycle it once', async (t) => {
  const redis = await startRedis(t)
  const client = await connected(t, createRedisClient({ kind: 'single', url: redis.url })) as Redis
  const socket = client.stream
  const closeListeners = socket.listenerCount('close')
  redis.pause()
  t.teardown(() => { redis.resume() })
  // As the store does for each of its failed commands (a hang mid-traffic: 160 of them at once).
  const failures = await Promise.all(Array.from({ length: 20 }, async () => await client.ping().catch((error: unknown) => error)))
  for (const error of failures) recycleIfSilent(client, error)
  t.same(failures.map((error) => (error as Error).message), Array.from({ length: 20 }, () => 'Command timed out'))
  t.equal(socket.listenerCount('close') - closeListeners, 1, 'one disconnect for the connection, not one per command (each added a listener to the socket: Node warned at 11)')
})
