import { test } from 'tap'
import { build, issue, LogCapture, refreshWith } from '../support/app.js'
import { redisCommand, startRedis } from '../support/redis.js'

// Issue 12: with Redis full under noeviction, every write was refused while /health/ready said 200
// and the log said "store unreachable", which it was not. Now: readiness stays 200 (it answers;
// issuing needs no store), refresh and revoke answer 503, and the log says why, once, and when it ends.

test('Redis out of memory: 503 on writes, one error line that names the cause, readiness 200, recovery said once', async (t) => {
  const redis = await startRedis(t, ['--maxmemory-policy', 'noeviction'])
  const logs = new LogCapture()
  const app = await build(t, { REDIS_URL: redis.url, LOG_LEVEL: 'info' }, logs)
  const pairs = await Promise.all(Array.from({ length: 3 }, async () => issue(app, { sub: 'full' })))

  // Full: more data than maxmemory allows (noeviction keeps every key, so every write is refused).
  await redisCommand(redis.url, 'SET', 'filler', 'x'.repeat(2 * 1024 * 1024))
  await redisCommand(redis.url, 'CONFIG', 'SET', 'maxmemory', '1mb')

  for (const pair of pairs.slice(0, 2)) {
    const response = await refreshWith(app, pair.refresh_token)
    t.same([response.statusCode, response.json().code], [503, 'denylist_unavailable'], 'refresh: 503, never a logout')
  }
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pairs[2]?.access_token } })).statusCode, 503, 'revoke: 503')
  t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200, 'readiness stays 200: Redis answers')
  const full = logs.lines.filter((line) => String(line['msg']).startsWith('store full'))
  t.equal(full.length, 1, 'one error line for the episode, not one per request')
  t.match(full[0], { level: 50, reason: /^OOM / })
  t.notOk(logs.lines.some((line) => String(line['msg']).startsWith('store unreachable')), 'and never "unreachable"')

  await redisCommand(redis.url, 'CONFIG', 'SET', 'maxmemory', '0')
  t.equal((await refreshWith(app, pairs[0]?.refresh_token ?? '')).statusCode, 200, 'room again: the token answered 503 refreshes')
  t.equal(logs.lines.filter((line) => line['msg'] === 'store writable again: Redis accepts denylist writes').length, 1, 'and the recovery is said once')
})
