import { copyFileSync, mkdirSync, readdirSync, readFileSync, renameSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'
import { parseAllDocuments } from 'yaml'
import { Deployment, type IDeployment } from 'kubernetes-models/apps/v1/Deployment'
import { HorizontalPodAutoscaler, type IHorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler'
import { NetworkPolicy, type INetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy'
import { PodDisruptionBudget, type IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget'
import { ConfigMap, type IConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Secret, type ISecret } from 'kubernetes-models/v1/Secret'
import { Service, type IService } from 'kubernetes-models/v1/Service'
import type { IContainer } from 'kubernetes-models/v1/Container'
import type { IProbe } from 'kubernetes-models/v1/Probe'
import { loadConfig } from '../../src/config.js'
import { ConfigError } from '../../plugins/errors.js'
import { parseKeysFile } from '../../plugins/key-material.js'
import { COMMAND_TIMEOUT_MS } from '../../plugins/redis.js'
import { generate, rotate } from '../../scripts/keys.js'
import { build } from '../support/app.js'
import { freePort } from '../support/net.js'
import { ROOT } from '../support/paths.js'

// deploy/*.yaml is what `kubectl apply -f deploy/` reads; deploy/examples/ holds the Secrets' shape,
// which is checked as strictly but never applied from there.
const FOLDERS = ['deploy', 'deploy/examples']

type Manifest = Record<string, unknown> & { apiVersion: string, kind: string, metadata?: { name?: string, namespace?: string } }
interface Loaded { file: string, manifest: Manifest }
type ModelClass = new (data: never) => { validate: () => void }

/** The schema of each kind we ship, as kubernetes-models compiled it from Kubernetes' OpenAPI document. */
const MODELS: Record<string, ModelClass> = {
  'apps/v1 Deployment': Deployment,
  'autoscaling/v2 HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'networking.k8s.io/v1 NetworkPolicy': NetworkPolicy,
  'policy/v1 PodDisruptionBudget': PodDisruptionBudget,
  'v1 ConfigMap': ConfigMap,
  'v1 Secret': Secret,
  'v1 Service': Service
}

/** Every document of every YAML file, read as Kubernetes reads YAML (1.1: `0440` is octal there). */
function loadManifests (): Loaded[] {
  const loaded: Loaded[] = []
  for (const folder of FOLDERS) {
    for (const name of readdirSync(join(ROOT, folder)).filter((file) => /\.ya?ml$/.test(file)).sort()) {
      const file = `${folder}/${name}`
      for (const document of parseAllDocuments(readFileSync(join(ROOT, file), 'utf8'), { version: '1.1' })) {
        if (document.errors.length > 0) throw new Error(`${file}: ${document.errors.map((error) => error.message).join('; ')}`)
        const manifest = document.toJS() as Manifest | null
        if (manifest !== null) loaded.push({ file, manifest })
      }
    }
  }
  return loaded
}

const LOADED = loadManifests()
const MANIFESTS = LOADED.map(({ manifest }) => manifest)

function only<T> (kind: string, name?: string): T {
  const found = MANIFESTS.filter((manifest) => manifest.kind === kind && (name === undefined || manifest.metadata?.name === name))
  if (found.length !== 1) throw new Error(`expected one ${kind}${name === undefined ? '' : ` named ${name}`} in deploy/, found ${found.length}`)
  return found[0] as T
}

interface SchemaError { instancePath: string, message?: string }

function schemaErrors (Model: ModelClass, manifest: unknown): SchemaError[] {
  try {
    new Model(manifest as never).validate()
    return []
  } catch (error) {
    return (error as { errors?: SchemaError[] }).errors ?? [{ instancePath: '', message: String(error) }]
  }
}

/**
 * Fields the schema does not know (`subpath` for `subPath`), which `kubectl apply` refuses and the
 * schema alone lets through. A known field fails validation when given a value of no JSON type;
 * an unknown one is ignored: that is how each field is told apart.
 */
function unknownFields (Model: ModelClass, manifest: Record<string, unknown>): string[] {
  const noJsonType = Symbol('no JSON type')
  const unknown: string[] = []
  const visit = (node: unknown, pointer: string): void => {
    if (Array.isArray(node)) {
      node.forEach((item, index) => { visit(item, `${pointer}/${index}`) })
      return
    }
    if (node === null || typeof node !== 'object') return
    const object = node as Record<string, unknown>
    for (const [key, value] of Object.entries(object)) {
      const path = `${pointer}/${key.replaceAll('~', '~0').replaceAll('/', '~1')}`
      object[key] = noJsonType
      const known = schemaErrors(Model, manifest).some((error) => error.instancePath === path || error.instancePath.startsWith(`${path}/`))
      object[key] = value
      if (known) visit(value, path)
      else unknown.push(path)
    }
  }
  visit(manifest, '')
  return unknown
}

function modelOf (manifest: Manifest): ModelClass | undefined {
  return MODELS[`${manifest.apiVersion} ${manifest.kind}`]
}

interface Selector { matchLabels?: Record<string, string>, matchExpressions?: Array<{ key: string, operator: string, values?: string[] }> }

function selects (selector: Selector | undefined, labels: Record<string, string>): boolean {
  if (selector === undefined) return false
  const byLabel = Object.entries(selector.matchLabels ?? {}).every(([key, value]) => labels[key] === value)
  const byExpression = (selector.matchExpressions ?? []).every(({ key, operator, values = [] }) => {
    const value = labels[key]
    if (operator === 'In') return value !== undefined && values.includes(value)
    if (operator === 'NotIn') return value === undefined || !values.includes(value)
    return operator === 'Exists' ? value !== undefined : value === undefined
  })
  return byLabel && byExpression
}

const deployment = only<IDeployment>('Deployment', 'rotor')
const podSpec = deployment.spec?.template.spec
const podLabels = deployment.spec?.template.metadata?.labels ?? {}

function rotorContainer (): IContainer {
  const container = podSpec?.containers.find((candidate) => candidate.name === 'rotor')
  if (container === undefined) throw new Error('no container named rotor in the Deployment')
  return container
}

function containerPort (port: number | string | undefined): number | undefined {
  if (typeof port === 'number') return port
  return rotorContainer().ports?.find((candidate) => candidate.name === port)?.containerPort
}

function secretData (secret: ISecret): Record<string, string> {
  const decoded = Object.fromEntries(Object.entries(secret.data ?? {}).map(([key, value]) => [key, Buffer.from(value, 'base64').toString()]))
  return { ...decoded, ...secret.stringData }
}

/** The environment a Rotor pod starts with: envFrom in order, then env, which wins (as the kubelet does it). */
function podEnvironment (): Record<string, string> {
  const container = rotorContainer()
  const env: Record<string, string> = {}
  for (const source of container.envFrom ?? []) {
    if (source.configMapRef !== undefined) Object.assign(env, only<IConfigMap>('ConfigMap', source.configMapRef.name).data)
    if (source.secretRef !== undefined) Object.assign(env, secretData(only<ISecret>('Secret', source.secretRef.name)))
  }
  for (const variable of container.env ?? []) if (variable.value !== undefined) env[variable.name] = variable.value
  return env
}

function probes (): { startup: IProbe, liveness: IProbe, readiness: IProbe } {
  const { startupProbe, livenessProbe, readinessProbe } = rotorContainer()
  if (startupProbe === undefined || livenessProbe === undefined || readinessProbe === undefined) throw new Error('the rotor container needs startup, liveness and readiness probes')
  return { startup: startupProbe, liveness: livenessProbe, readiness: readinessProbe }
}

/** The keys Secret's mount: the directory that holds JWT_KEYS_FILE. */
function keysMount (): { mountPath: string, subPath?: string, readOnly?: boolean, secretName: string | undefined, defaultMode: number | undefined } {
  const file = podEnvironment()['JWT_KEYS_FILE'] ?? ''
  const mount = rotorContainer().volumeMounts?.find((candidate) => file.startsWith(`${candidate.mountPath}/`))
  if (mount === undefined) throw new Error(`JWT_KEYS_FILE=${file} is in no volume mount`)
  const volume = podSpec?.volumes?.find((candidate) => candidate.name === mount.name)
  return { ...mount, secretName: volume?.secret?.secretName, defaultMode: volume?.secret?.defaultMode }
}

type App = Awaited<ReturnType<typeof build>>

/** The app's ops listener (MANAGEMENT_PORT), which the probes and Prometheus reach. */
function opsListener (app: App): NonNullable<App['management']> {
  if (app.management === null) throw new Error('no ops listener: MANAGEMENT_PORT is not set')
  return app.management
}

/** What Rotor says is wrong with its settings; none when they load. */
function problems (load: () => unknown): string[] {
  try {
    load()
    return []
  } catch (error) {
    if (error instanceof ConfigError) return error.problems
    throw error
  }
}

test('every manifest is valid against its kind\'s Kubernetes schema, with no unknown field', async (t) => {
  t.ok(LOADED.length >= 8, `read ${LOADED.length} documents from ${FOLDERS.join(', ')}`)
  for (const { file, manifest } of LOADED) {
    const name = `${file}: ${manifest.kind}/${String(manifest.metadata?.name)}`
    const Model = modelOf(manifest)
    if (Model === undefined) {
      t.fail(`${name}: ${manifest.apiVersion} ${manifest.kind} has no schema here; add its model to MODELS`)
      continue
    }
    t.same(schemaErrors(Model, manifest).map((error) => `${error.instancePath} ${String(error.message)}`), [], `${name}: valid`)
    t.same(unknownFields(Model, manifest), [], `${name}: no unknown field`)
    t.equal(manifest.metadata?.namespace, undefined, `${name}: no namespace pinned (kubectl -n decides, for all of them alike)`)
  }
})

test('the validation bites: a wrong type and a misspelt field are both caught', async (t) => {
  const broken = structuredClone(deployment)
  const spec = broken.spec as unknown as Record<string, unknown>
  spec['replicas'] = 'two'
  const mount = broken.spec?.template.spec?.containers[0]?.volumeMounts?.[0] as unknown as Record<string, unknown>
  mount['subpath'] = 'keys.json'
  t.match(schemaErrors(Deployment, broken), [{ instancePath: '/spec/replicas' }])
  t.same(unknownFields(Deployment, broken as unknown as Manifest), ['/spec/template/spec/containers/0/volumeMounts/0/subpath'])
})

test('the pod\'s environment is a valid production configuration, once the example API key is replaced', async (t) => {
  const env = podEnvironment()
  t.match(problems(() => loadConfig(env)), [/^API_KEYS: /], 'the example Secret\'s placeholder API key is refused, and nothing else: it cannot run as it is')
  // The settings read the keys file: a real one stands in for the Secret's placeholder (checked below).
  const keysFile = join(t.testdir(), 'keys.json')
  generate(keysFile, { algorithm: 'EdDSA', now: new Date() })
  const config = loadConfig({ ...env, API_KEYS: 'a-real-key-of-24-characters', JWT_KEYS_FILE: keysFile })
  t.equal(config.isProduction, true)
  t.equal(config.host, '0.0.0.0', 'listens where the kubelet and the Service reach it')
  t.equal(config.port, containerPort('http'), 'on the container port')
  t.ok(rotorContainer().env?.some((variable) => variable.name === 'MANAGEMENT_PORT' && variable.value !== undefined), 'the Deployment sets MANAGEMENT_PORT itself: the layout fixes it, no ConfigMap can move it')
  t.type(containerPort('ops'), 'number', 'there is a container port named ops')
  t.equal(config.managementPort, containerPort('ops'), 'the ops listener is on the container port named ops')
  t.not(config.managementPort, config.port, 'a port of its own')
  t.equal(config.managementHost, '0.0.0.0', 'on every interface too, where the kubelet and Prometheus reach it')
  t.not(config.redis.kind, 'memory', 'with a Redis, shared by every pod')
  t.equal(config.denylistEnabled, true)

  const keys = only<ISecret>('Secret', keysMount().secretName)
  const [file = '', text = ''] = Object.entries(secretData(keys))[0] ?? []
  t.equal(env['JWT_KEYS_FILE'], `${keysMount().mountPath}/${file}`, 'JWT_KEYS_FILE is the keys Secret\'s file')
  t.match(problems(() => parseKeysFile(JSON.parse(text), file, config.jwtAlgorithm)), [/expected a JWKS/], 'the example keys.json is refused too')
})

test('API keys, the Redis URL and the signing keys come from Secrets, never from the ConfigMap or the manifest', async (t) => {
  const secretSettings = ['API_KEYS', 'REDIS_URL', 'JWT_SECRET', 'LEGACY_SIMPLEJWT_SIGNING_KEY']
  const container = rotorContainer()
  for (const configMap of MANIFESTS.filter((manifest) => manifest.kind === 'ConfigMap') as IConfigMap[]) {
    for (const name of secretSettings) t.notOk(name in (configMap.data ?? {}), `ConfigMap ${String(configMap.metadata?.name)} has no ${name}`)
  }
  for (const variable of container.env ?? []) {
    if (secretSettings.includes(variable.name)) t.ok(variable.valueFrom?.secretKeyRef, `${variable.name} comes from a Secret`)
  }
  const secretRefs = (container.envFrom ?? []).flatMap((source) => source.secretRef === undefined ? [] : [source.secretRef.name])
  t.ok(secretRefs.some((name) => 'API_KEYS' in secretData(only<ISecret>('Secret', name))), 'API_KEYS is in a Secret the pod reads')
  t.ok(keysMount().secretName, 'the keys file is a Secret volume')
})

test('the keys Secret is mounted as a directory, read-only and readable, so that kubelet updates reach Rotor', async (t) => {
  const mount = keysMount()
  t.equal(mount.subPath, undefined, 'no subPath: a subPath mount never sees an update of its Secret')
  t.equal(mount.readOnly, true)
  t.type(podSpec?.securityContext?.fsGroup, 'number', 'the kubelet gives the files to fsGroup, a group the process is in')
  t.equal((mount.defaultMode ?? 0o644) & 0o040, 0o040, 'and that group may read them')
  t.equal((mount.defaultMode ?? 0o644) & 0o007, 0, 'nobody else may')
})

test('a Secret update, swapped in the way the kubelet does it, reaches a running Rotor without a restart', async (t) => {
  // The kubelet's layout: keys.json -> ..data/keys.json, ..data -> a timestamped directory that
  // an update replaces by renaming a new ..data symlink over the old one.
  const dir = t.testdir()
  const publish = (version: string): void => {
    symlinkSync(version, join(dir, '..data_tmp'))
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
  }
  mkdirSync(join(dir, '..v1'))
  generate(join(dir, '..v1', 'keys.json'), { algorithm: 'EdDSA', now: new Date() })
  publish('..v1')
  symlinkSync('..data/keys.json', join(dir, 'keys.json'))
  const app = await build(t, { JWT_KEYS_FILE: join(dir, 'keys.json'), REDIS_URL: '' })
  const before = app.keyring.keys.map((key) => key.kid)

  mkdirSync(join(dir, '..v2'))
  copyFileSync(join(dir, '..v1', 'keys.json'), join(dir, '..v2', 'keys.json'))
  rotate(join(dir, '..v2', 'keys.json'), { now: new Date(), stage: true })
  publish('..v2')
  const deadline = Date.now() + 5000
  while (app.keyring.keys.length === before.length && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(app.keyring.keys.length, before.length + 1, 'the staged key is loaded')
  t.equal(app.keyring.active.kid, before[0], 'and the active key still signs')
})

test('the Service, the probes, the NetworkPolicy and the scrape annotation all point at the ports Rotor listens on', async (t) => {
  const port = Number(podEnvironment()['PORT'])
  const opsPort = Number(podEnvironment()['MANAGEMENT_PORT'])
  t.equal(containerPort('http'), port, 'the container port http is PORT')
  t.equal(containerPort('ops'), opsPort, 'the container port ops is MANAGEMENT_PORT')
  t.not(opsPort, port)
  const service = only<IService>('Service', 'rotor')
  t.same(service.spec?.ports?.map((entry) => containerPort(entry.targetPort)), [port], 'the Service sends to http only: the ops port is not in it')
  for (const [name, probe] of Object.entries(probes())) {
    t.equal(probe.httpGet?.port, 'ops', `${name} probe targets the ops port by name`)
    t.equal(containerPort(probe.httpGet?.port), opsPort, `${name} probe reaches MANAGEMENT_PORT`)
    t.not(probe.httpGet?.scheme, 'HTTPS', `${name} probe speaks plain HTTP, as Rotor does`)
  }
  const annotations = deployment.spec?.template.metadata?.annotations ?? {}
  t.equal(annotations['prometheus.io/scrape'], 'true')
  t.equal(Number(annotations['prometheus.io/port']), opsPort, '/metrics is scraped on the ops port')
  t.equal(annotations['prometheus.io/path'], '/metrics')
})

test('the NetworkPolicy lets callers into the service port and only Prometheus into the ops port', async (t) => {
  const port = Number(podEnvironment()['PORT'])
  const opsPort = Number(podEnvironment()['MANAGEMENT_PORT'])
  const rules = only<INetworkPolicy>('NetworkPolicy', 'rotor').spec?.ingress ?? []
  const admits = (target: number) => rules.filter((rule) => rule.ports?.some((entry) => containerPort(entry.port) === target))
  t.ok(rules.every((rule) => (rule.ports ?? []).length > 0), 'every rule names its ports (a rule without ports admits every port)')

  t.ok(admits(port).length > 0, 'the NetworkPolicy lets callers into the service port')
  t.ok(admits(port).some((rule) => rule.from === undefined), 'from anywhere, as before: backends, the ingress controller')

  const ops = admits(opsPort)
  t.ok(ops.length > 0, 'the NetworkPolicy lets the scraper into the ops port')
  for (const rule of ops) {
    t.ok((rule.from ?? []).length > 0, 'the ops port is not open to everyone: its rule has a `from`')
    for (const peer of rule.from ?? []) {
      t.equal(peer.ipBlock, undefined, 'no address block: a pod, found by its labels')
      t.ok(Object.keys(peer.namespaceSelector?.matchLabels ?? {}).length > 0, 'in a namespace named by its labels')
      t.ok(Object.keys(peer.podSelector?.matchLabels ?? {}).length > 0, 'and a pod named by its labels, in the same entry (namespace AND pod)')
    }
  }
  t.notOk(ops.some((rule) => rule.ports?.some((entry) => containerPort(entry.port) === port)), 'the ops rule opens nothing else')
})

test('the Deployment, Service, PodDisruptionBudget, NetworkPolicy and autoscaler all mean the same pods', async (t) => {
  t.ok(selects(deployment.spec?.selector, podLabels), 'the Deployment selects its own pods')
  t.ok(selects({ matchLabels: only<IService>('Service', 'rotor').spec?.selector ?? { none: 'selector' } }, podLabels), 'the Service')
  t.ok(selects(only<IPodDisruptionBudget>('PodDisruptionBudget', 'rotor').spec?.selector, podLabels), 'the PodDisruptionBudget')
  t.ok(selects(only<INetworkPolicy>('NetworkPolicy', 'rotor').spec?.podSelector, podLabels), 'the NetworkPolicy')
  for (const constraint of podSpec?.topologySpreadConstraints ?? []) t.ok(selects(constraint.labelSelector, podLabels), 'the spread constraint')

  const hpa = only<IHorizontalPodAutoscaler>('HorizontalPodAutoscaler', 'rotor')
  t.same(hpa.spec?.scaleTargetRef, { apiVersion: deployment.apiVersion, kind: deployment.kind, name: deployment.metadata?.name }, 'the autoscaler scales the Deployment')
  t.equal(deployment.spec?.replicas, undefined, 'which leaves the replica count to it: a number would be reset at every apply')
  t.ok(hpa.spec?.metrics?.some((metric) => metric.resource?.name === 'cpu' && metric.resource.target.type === 'Utilization'), 'on CPU utilization')
  t.ok(rotorContainer().resources?.requests?.['cpu'], 'which is measured against the CPU request, so there must be one')
  t.ok(rotorContainer().resources?.limits?.['memory'], 'and a memory limit')
  const maxUnavailable = only<IPodDisruptionBudget>('PodDisruptionBudget', 'rotor').spec?.maxUnavailable
  t.ok(typeof maxUnavailable === 'number' && (hpa.spec?.minReplicas ?? 1) > maxUnavailable, 'a drain never takes the last pod')
})

test('the pod runs as a non-root user, on a read-only root file system, without capabilities', async (t) => {
  const pod = podSpec?.securityContext
  const container = rotorContainer().securityContext
  t.equal(pod?.runAsNonRoot, true)
  t.equal(pod?.runAsUser, 1000, 'the uid of the image\'s `node` user, which the kubelet cannot check by name')
  t.match(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'), /^USER node$/m)
  t.equal(container?.readOnlyRootFilesystem, true, 'Rotor writes no file')
  t.equal(container?.allowPrivilegeEscalation, false)
  t.ok(container?.capabilities?.drop?.includes('ALL'), 'drops every capability')
  t.equal(podSpec?.automountServiceAccountToken, false, 'no API token: Rotor never calls the Kubernetes API')
})

test('a terminating pod drains, then shuts down gracefully within its grace period', async (t) => {
  // Every process that stops gracefully (the server, and a primary over workers if any) gives
  // close-with-grace a delay after which it exits anyway: the longest one counts.
  const delays = readdirSync(join(ROOT, 'src'), { recursive: true, encoding: 'utf8' }).filter((file) => file.endsWith('.ts'))
    .flatMap((file) => [...readFileSync(join(ROOT, 'src', file), 'utf8').matchAll(/closeWithGrace\(\s*\{[^}]*delay:\s*([\d_]+)/g)])
    .map((match) => Number(match[1]?.replaceAll('_', '')) / 1000)
  t.ok(delays.length > 0, 'src/ gives close-with-grace a delay')
  const graceful = Math.max(...delays)
  const drain = rotorContainer().lifecycle?.preStop?.sleep?.seconds ?? 0
  t.ok(drain >= 3, 'a preStop sleep lets endpoints and load balancers forget the pod before SIGTERM')
  t.ok((podSpec?.terminationGracePeriodSeconds ?? 30) > drain + graceful, `the grace period outlasts the sleep (${drain} s) and close-with-grace (${graceful} s)`)
  t.ok((probes().readiness.timeoutSeconds ?? 1) * 1000 > COMMAND_TIMEOUT_MS, 'readiness waits longer than Rotor waits for Redis, so it gets Rotor\'s answer')
})

test('the probes\' paths answer on the ops listener as the probes need: liveness and startup whatever Redis does, readiness only with Redis', async (t) => {
  const { startup, liveness, readiness } = probes()
  const ops = { MANAGEMENT_PORT: podEnvironment()['MANAGEMENT_PORT'] ?? '' }
  const get = async (app: App, probe: IProbe): Promise<number> =>
    (await opsListener(app).inject({ method: 'GET', url: probe.httpGet?.path ?? '(no httpGet)' })).statusCode

  const healthy = await build(t, ops)
  t.equal(await get(healthy, startup), 200, `startup: ${String(startup.httpGet?.path)}`)
  t.equal(await get(healthy, liveness), 200, `liveness: ${String(liveness.httpGet?.path)}`)
  t.equal(await get(healthy, readiness), 200, `readiness: ${String(readiness.httpGet?.path)}`)

  const noRedis = await build(t, { ...ops, REDIS_URL: `redis://127.0.0.1:${await freePort()}` })
  t.equal(await get(noRedis, startup), 200, 'a pod starting during a Redis outage is not killed')
  t.equal(await get(noRedis, liveness), 200, 'nor restarted: a restart cures no Redis outage')
  t.equal(await get(noRedis, readiness), 503, 'it leaves the Service until Redis answers')
})

test('Prometheus finds /metrics on the ops listener, and nobody finds it on the service port', async (t) => {
  const annotations = deployment.spec?.template.metadata?.annotations ?? {}
  const path = annotations['prometheus.io/path'] ?? '(no prometheus.io/path)'
  const app = await build(t, { MANAGEMENT_PORT: podEnvironment()['MANAGEMENT_PORT'] ?? '' })

  const scraped = await opsListener(app).inject({ method: 'GET', url: path })
  t.equal(scraped.statusCode, 200, `${path} answers on the ops listener`)
  t.match(scraped.body, /^rotor_tokens_issued_total /m, 'with Rotor\'s metrics')

  const hidden = await app.inject({ method: 'GET', url: path })
  t.equal(hidden.statusCode, 404, `${path} is 404 on the service port`)
  t.equal(hidden.json<{ code: string }>().code, 'not_found')
})
