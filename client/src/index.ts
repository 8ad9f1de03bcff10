// @rotor/client: keeps a Rotor session's access token fresh in browsers and in Node.
export { createRotorClient, RotorRefusedError, RotorUnavailableError, type RotorClient, type RotorClientOptions } from './client.js'
export { indexedDbStorage, memoryStorage, type IndexedDbStorageOptions, type RotorStorage, type StoredSession } from './storage.js'
export { expiryOf, type Pair, type RouteFamily, type SignOutReason, type TokenPairInput } from './wire.js'
export { createDpopKey, dpopProof, type DpopKey } from './dpop.js'
