import { test } from 'tap'
import { build, decodeJwt, issue, refreshWith, introspectToken, type Pair } from './helper.js'

test('refresh rotates the pair, keeping sid, auth_time and custom claims', async (t) => {
  const app = await build(t)
  const first = await issue(app, { sub: 'alice', claims: { role: 'admin', org: 7 } })
  const response = await refreshWith(app, first.refresh_token)
  t.equal(response.statusCode, 200)
  const second = response.json<Pair>()
  const before = decodeJwt(first.refresh_token).payload
  const after = decodeJwt(second.refresh_token).payload
  const access = decodeJwt(second.access_token).payload
  t.not(after['jti'], before['jti'], 'a new refresh jti')
  t.equal(after['sid'], before['sid'], 'the same session')
  t.equal(after['auth_time'], before['auth_time'])
  t.equal(access['role'], 'admin', 'custom claims copied into the rotated access token')
  t.equal(access['org'], 7)
  t.equal(access['token_type'], 'access')
  t.equal(second.token_type, 'Bearer')
})

test('a rotated refresh token presented after the grace window is reuse and revokes the session', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const first = await issue(app)
  const second = (await refreshWith(app, first.refresh_token)).json<Pair>()
  const replay = await refreshWith(app, first.refresh_token)
  t.equal(replay.statusCode, 401)
  t.equal(replay.json().code, 'token_reused')
  const descendant = await refreshWith(app, second.refresh_token)
  t.equal(descendant.json().code, 'token_revoked', 'the pair issued by the first rotation stops working too')
  t.same(await introspectToken(app, second.access_token), { active: false })
})
