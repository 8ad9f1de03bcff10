import { test } from 'tap'
import { buildApp } from '../../src/app.js'
import { StartupError } from '../../plugins/errors.js'
import { build, issue, LogCapture, testConfig } from '../support/app.js'
import { OwnRedis, startRedis } from '../support/redis.js'
import { freePort } from '../support/net.js'

async function messages (logs: LogCapture, level: number): Promise<string[]> {
  await new Promise((resolve) => setTimeout(resolve, 50))
  return logs.lines.filter((line) => line['level'] === level).map((line) => String(line['msg']))
}

test('a Redis whose maxmemory-policy may evict keys is reported loudly at start', async (t) => {
  const redis = await startRedis(t, ['--maxmemory-policy', 'volatile-lru'])
  const logs = new LogCapture()
  const app = await build(t, { REDIS_URL: redis.url }, logs)
  await app.ready()
  t.match(await messages(logs, 50), [/maxmemory-policy is volatile-lru.*un-revoke/])
})

test('in production an evicting Redis stops the build with a StartupError', async (t) => {
  const redis = await startRedis(t, ['--maxmemory-policy', 'allkeys-lru'])
  const config = testConfig({ REDIS_URL: redis.url, NODE_ENV: 'production', JWT_ALGORITHM: 'HS256', JWT_SECRET: 'x'.repeat(32) })
  await t.rejects(buildApp(config, { logStream: new LogCapture() }), StartupError)
})

test('in production, a Redis that keeps nothing on disk is warned about at start; one with AOF is not (issue 12)', async (t) => {
  for (const [args, warned] of [[[], true], [['--appendonly', 'yes'], false]] as const) {
    const redis = await startRedis(t, [...args])
    const logs = new LogCapture()
    const app = await buildApp(testConfig({ REDIS_URL: redis.url, NODE_ENV: 'production', JWT_ALGORITHM: 'HS256', JWT_SECRET: 'x'.repeat(32), LOG_LEVEL: 'info' }), { logStream: logs })
    t.teardown(async () => { await app.close() })
    const warning = logs.lines.find((line) => String(line['msg']).startsWith('Redis keeps nothing on disk'))
    t.equal(warning !== undefined, warned, args.length === 0 ? 'no AOF, no RDB: warned' : 'AOF on: not warned')
    if (warned) t.equal(warning?.['level'], 40, 'at warn level')
  }
})

test('a Redis that refuses CONFIG gets a warning and Rotor starts', async (t) => {
  const redis = await startRedis(t, ['--rename-command', 'CONFIG', ''])
  const logs = new LogCapture()
  const app = await build(t, { REDIS_URL: redis.url }, logs)
  await app.ready()
  t.ok((await messages(logs, 40)).some((line) => /could not read Redis maxmemory-policy/.test(line)))
  t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200)
})

test('the policy is read again when Redis comes back', async (t) => {
  const redis = await startRedis(t)
  const logs = new LogCapture()
  const app = await build(t, { REDIS_URL: redis.url }, logs)
  await app.ready()
  t.same(await messages(logs, 50), [], 'noeviction: nothing to say')
  await redis.stop()
  const restarted = new OwnRedis(redis.port, ['--maxmemory-policy', 'allkeys-random'])
  t.teardown(async () => { await restarted.stop() })
  await restarted.start()
  const deadline = Date.now() + 5000
  while (Date.now() < deadline && !(await messages(logs, 50)).some((line) => line.includes('allkeys-random'))) {
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.ok((await messages(logs, 50)).some((line) => line.includes('maxmemory-policy is allkeys-random')))
})

test('cluster and sentinel settings build clients that wait, not-ready, for their Redis', async (t) => {
  const port = await freePort()
  for (const env of [{ REDIS_CLUSTER_NODES: `127.0.0.1:${port}` }, { REDIS_SENTINELS: `127.0.0.1:${port}`, REDIS_SENTINEL_NAME: 'primary' }]) {
    const app = await build(t, { ...env, REDIS_URL: '' })
    t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 503, JSON.stringify(env))
    const pair = await issue(app)
    const refresh = await app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh_token: pair.refresh_token } })
    t.equal(refresh.statusCode, 503)
    t.equal(refresh.json().code, 'denylist_unavailable')
  }
})

test('with the denylist off, readiness does not depend on Redis', async (t) => {
  const port = await freePort()
  const app = await build(t, { REDIS_URL: `redis://127.0.0.1:${port}`, DENYLIST_ENABLED: 'false' })
  const ready = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { status: 'ok', store: 'not needed' })
})

test('an unexpected error is logged with its stack and answered without details', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, {}, logs)
  app.get('/boom', async () => { throw new Error('internal detail that must not leak') })
  const response = await app.inject({ method: 'GET', url: '/boom' })
  t.equal(response.statusCode, 500)
  t.same(response.json(), { statusCode: 500, code: 'internal_error', error: 'Internal Server Error', message: 'an unexpected error occurred' })
  const logged = logs.lines.find((line) => line['msg'] === 'unexpected error')
  t.equal(logged?.['level'], 50)
  t.match((logged?.['err'] as { stack?: string } | undefined)?.stack, /internal detail/)
})
