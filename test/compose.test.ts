import { test } from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

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
})

test('the Dockerfile builds in stages and runs as a non-root user', async (t) => {
  const dockerfile = readFileSync(`${ROOT}/Dockerfile`, 'utf8')
  t.equal(dockerfile.match(/^FROM /gm)?.length, 2, 'two stages')
  t.match(dockerfile, /^USER node$/m)
  t.match(dockerfile, /HEALTHCHECK .*\n?.*health\/ready/)
  t.match(dockerfile, /npm prune --omit=dev/)
})
