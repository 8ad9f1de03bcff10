import fp from 'fastify-plugin'
import type { Config } from '../src/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

/** The parsed settings, for every plugin and route; nothing below reads process.env. */
export default fp(async function configPlugin (app, opts: { config: Config }) {
  app.decorate('config', opts.config)
}, { name: 'config', fastify: '5.x' })
