import { createHmac, randomUUID } from 'node:crypto'

/** The Django SECRET_KEY the tests' old SimpleJWT service signed with (LEGACY_SIMPLEJWT_SIGNING_KEY). */
export const DJANGO_SECRET = 'django-insecure-0123456789abcdefghijklmnopqrstuvwxyz'

/** A refresh token exactly as djangorestframework-simplejwt 5 mints one (HS256, SECRET_KEY). */
export function simpleJwtRefresh (userId: number | string, options: { secret?: string, lifetime?: number, type?: string } = {}): string {
  const now = Math.floor(Date.now() / 1000)
  const header = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url')
  const payload = Buffer.from(JSON.stringify({
    token_type: options.type ?? 'refresh', exp: now + (options.lifetime ?? 86400), iat: now, jti: randomUUID().replaceAll('-', ''), user_id: userId
  })).toString('base64url')
  const signature = createHmac('sha256', options.secret ?? DJANGO_SECRET).update(`${header}.${payload}`).digest('base64url')
  return `${header}.${payload}.${signature}`
}
