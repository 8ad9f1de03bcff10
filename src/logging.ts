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
