import { existsSync, readFileSync } from 'node:fs'
import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { ERROR_CODES } from './errors.js'

// package.json is one folder up from plugins/ in a checkout, two from dist/plugins/ when built.
const PACKAGE = [new URL('../package.json', import.meta.url), new URL('../../package.json', import.meta.url)].filter((url) => existsSync(url))
/** Rotor's release, as package.json says (the document's info.version). */
export const VERSION = String((JSON.parse(readFileSync(PACKAGE[0]!, 'utf8')) as { version?: unknown }).version)

const ERROR_TABLE = Object.entries(ERROR_CODES).map(([code, status]) => `| ${status} | \`${code}\` |`).join('\n')

/**
 * OpenAPI 3, generated from the route schemas: GET /openapi.json, and a browsable GET /docs.
 * Registered before the routes so that it sees them all.
 */
export default fp(async function openapiPlugin (app) {
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Rotor',
        version: VERSION,
        description: 'Issues and rotates JWT access/refresh pairs. Every error answer is ' +
          '`{"statusCode", "code", "error", "message"}`; the codes are stable:\n\n| status | code |\n|---|---|\n' + ERROR_TABLE
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'http', scheme: 'bearer', description: 'An API key of API_KEYS' },
          basic: { type: 'http', scheme: 'basic', description: 'An API key of API_KEYS as HTTP Basic: its name, then its secret' },
          accessToken: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'The user\'s own Rotor access token' }
        }
      }
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}, { name: 'openapi', fastify: '5.x' })
