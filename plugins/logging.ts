import type { FastifyRequest } from 'fastify'

/**
 * Log fields that could carry a secret: pino replaces them with "[redacted]". Rotor's own log
 * lines name tokens by `jti` only; these paths catch what Fastify or a plugin might log.
 */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  'res.headers["set-cookie"]',
  '*.token',
  '*.refresh_token',
  '*.access_token',
  '*.refresh',
  '*.access',
  '*.apiKey',
  '*.secret',
  'body',
  '*.body'
]

/**
 * Anything shaped like a compact JWS: three base64url segments, the first two of four characters
 * or more (so that addresses and version numbers stay readable). A token may arrive where no
 * redaction path can see it: in a URL's path or query, or as a JSON property name that a
 * validation message repeats.
 */
const TOKEN_SHAPED = /[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g

/** `text` with every token-shaped run replaced by `[token]`: for URLs and messages that may echo input. */
export function scrubTokens (text: string): string {
  return text.replace(TOKEN_SHAPED, '[token]')
}

/** The request as the log shows it: Fastify's default fields, the URL scrubbed of tokens. */
export function serializeRequest (request: FastifyRequest): Record<string, unknown> {
  return { method: request.method, url: scrubTokens(request.url), host: request.host, remoteAddress: request.ip, remotePort: request.socket.remotePort }
}
