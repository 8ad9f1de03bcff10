import { test } from 'tap'
import { API_KEY, REDIS_URL, build, introspectToken, issue, refreshWith, type Pair } from '../support/app.js'
import { redisCommand } from '../support/redis.js'
import { mintPair, randomId } from '../../src/minting.js'

// Issue 12: "log out everywhere" compared seconds, so a session issued in the same second as the
// revocation was revoked too (59 of 59): "revoke all on password change, then issue a pair for
// this device" logged the device out. Sessions issued before the call stay revoked.

const revokeSubject = async (app: Awaited<ReturnType<typeof build>>, sub: string): Promise<number> =>
  (await app.inject({ method: 'POST', url: `/v1/subjects/${sub}/revoke`, headers: { authorization: `Bearer ${API_KEY}` } })).statusCode

for (const store of ['redis', 'memory'] as const) {
  test(`${store}: a pair issued right after "log out everywhere" works; one issued right before is revoked`, async (t) => {
    const app = await build(t, store === 'memory' ? { REDIS_URL: '' } : {})
    let revokedBefore = 0
    let workingAfter = 0
    for (let i = 0; i < 60; i++) {
      const sub = `device-${i}`
      const before = await issue(app, { sub })
      t.equal(await revokeSubject(app, sub), 200)
      const after = await issue(app, { sub })
      if ((await refreshWith(app, before.refresh_token)).json<{ code?: string }>().code === 'token_revoked' &&
        (await introspectToken(app, before.access_token))['active'] === false) revokedBefore++
      const refreshed = await refreshWith(app, after.refresh_token)
      if (refreshed.statusCode === 200 && (await introspectToken(app, refreshed.json<Pair>().access_token))['active'] === true) workingAfter++
    }
    t.equal(revokedBefore, 60, 'every session issued before the call is revoked, access tokens too')
    t.equal(workingAfter, 60, 'every session issued after it refreshes, and its access tokens introspect active')
  })
}

test('sessions and marks from before 0.2 keep their meaning: second resolution, revoked through the end of the second', async (t) => {
  const app = await build(t)
  const nowSec = Math.floor(Date.now() / 1000)
  // A session minted by Rotor 0.1: a sid of 16 random bytes, issued in this second.
  const old = mintPair(app.keyring, app.config, { sub: 'legacy-sid', sid: randomId(), authTime: nowSec, issuedUs: 0, aud: undefined, clientId: undefined, jkt: undefined, claims: {} }, nowSec, { access: randomId(), refresh: randomId() }, nowSec)
  t.equal(await revokeSubject(app, 'legacy-sid'), 200)
  t.match((await refreshWith(app, old.refresh_token)).json(), { code: 'token_revoked' }, 'an old session of this second is revoked by a new mark')

  // A mark written by Rotor 0.1 holds seconds: every session issued up to the end of that second is revoked.
  const key = `${app.config.redisKeyPrefix}{legacy-mark}:u`
  await redisCommand(REDIS_URL, 'SET', key, String(nowSec + 1), 'PX', 60_000)
  const inThatSecond = await issue(app, { sub: 'legacy-mark' })
  t.match((await refreshWith(app, inThatSecond.refresh_token)).json(), { code: 'token_revoked' }, 'a session issued before the end of the marked second is revoked')
  t.same(await introspectToken(app, inThatSecond.access_token), { active: false })
  // A new revocation on top of an old mark keeps the later of the two.
  t.equal(await revokeSubject(app, 'legacy-mark'), 200)
  t.equal(String(await redisCommand(REDIS_URL, 'GET', key)), String((nowSec + 2) * 1_000_000 - 1), 'the old mark, read as its last microsecond, is later than now: kept, written in full digits')
})
