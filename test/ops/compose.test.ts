import { test } from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { ROOT } from '../support/paths.js'

function succeeds (command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** `docker compose config`, or the standalone docker-compose where the plugin is missing (as here). */
function composeConfig (): string {
  const [command, args] = succeeds('docker', ['compose', 'version']) ? ['docker', ['compose', 'config']] : ['docker-compose', ['config']]
  return execFileSync(command, args, { cwd: ROOT, env: { ...process.env, API_KEYS: 'compose-check-key-0123456789' } }).toString()
}

test('docker-compose.yml is valid: Rotor as a sidecar next to a persistent, non-evicting Redis', async (t) => {
  const rendered = composeConfig()
  t.match(rendered, /services:/)
  t.match(rendered, /rotor:/)
  t.match(rendered, /redis:/)
  t.match(rendered, /--appendonly/, 'Redis persists the denylist across restarts')
  t.match(rendered, /noeviction/, 'and never evicts a revocation')
  t.match(rendered, /REDIS_URL: redis:\/\/redis:6379/)
  t.match(rendered, /NODE_ENV: production/)
  t.match(rendered, /health\/ready/, 'a healthcheck on readiness')
  t.match(rendered, /MANAGEMENT_PORT: ["']9100["']/, 'an ops listener')
  t.match(rendered, /127\.0\.0\.1:9100\/health\/ready/, 'which the healthcheck probes')
  t.match(rendered, /image: rotor:0\.2\.0/, 'the image is named, so one-off commands run the same one')
  // The compose plugin renders volumes long-form, the standalone docker-compose 1.x short-form.
  t.match(rendered, /rotor-keys:\/run\/rotor(:rw)?\n|source: rotor-keys\s+target: \/run\/rotor/, 'the keys live in a volume the keys CLI can write through `docker compose run`')
})

test('the Dockerfile builds in stages on Node 24 LTS and runs as a non-root user', async (t) => {
  const dockerfile = readFileSync(`${ROOT}/Dockerfile`, 'utf8')
  t.equal(dockerfile.match(/^FROM /gm)?.length, 2, 'two stages')
  t.same(dockerfile.match(/^FROM \S+/gm), ['FROM node:24-bookworm-slim', 'FROM node:24-bookworm-slim'], 'both on Node 24')
  t.match(dockerfile, /MANAGEMENT_PORT=9100/)
  t.match(dockerfile, /COPY scripts/, 'the keys CLI is compiled into the image')
  t.match(dockerfile, /^USER node$/m)
  t.match(dockerfile, /HEALTHCHECK .*\n?.*health\/ready/)
  t.match(dockerfile, /npm prune --omit=dev/)
})
