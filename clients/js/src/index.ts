/**
 * synchub's TypeScript SDK: a connection that falls back from WebSocket to SSE to long-poll and
 * resumes every subscription from its position, live inventory, and offline cart and review replicas
 * that converge through the hub. README.md has the API and examples.
 */

export { DEFAULT_BACKOFF, fullJitter, type BackoffOptions } from "./backoff.js";
export {
  type ClientOptions,
  type ConnectionState,
  HubError,
  type HubEvent,
  type Resync,
  type SubscribeOptions,
  SyncHubClient,
  type Transport,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export * from "./crdt/index.js";
export { type Call, CartDocument, newReplicaId, type QueuedEdit, type RefusedEdit, ReviewDocument } from "./documents.js";
export { type InventoryOptions, InventoryFeed, type StockChange, type StockLevel } from "./inventory.js";
export { isAfter, parsePosition, type Position } from "./positions.js";
export { AsyncStorageAdapter, type AsyncStorageLike, IndexedDBStorage, MemoryStorage, type Storage } from "./storage.js";
