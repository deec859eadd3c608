/**
 * Where documents keep their replicas and write-ahead queues: a small async key-value seam with
 * three implementations — memory (tests, ephemeral pages), IndexedDB (browsers) and an adapter for
 * AsyncStorage-style stores (React Native's `@react-native-async-storage/async-storage`, or anything
 * with getItem/setItem/removeItem). A write must be durable when its promise resolves: documents
 * persist an edit before they ship it.
 */

export interface Storage {
  get(key: string): Promise<string | null>;
  set(key: string, value: string): Promise<void>;
  delete(key: string): Promise<void>;
}

/** Kept in memory: gone with the process (the test double, and a page that needs no persistence). */
export class MemoryStorage implements Storage {
  private readonly items = new Map<string, string>();

  async get(key: string): Promise<string | null> {
    return this.items.get(key) ?? null;
  }

  async set(key: string, value: string): Promise<void> {
    this.items.set(key, value);
  }

  async delete(key: string): Promise<void> {
    this.items.delete(key);
  }
}

/** The subset of React Native's AsyncStorage (and of window.localStorage, promisified) used here. */
export interface AsyncStorageLike {
  getItem(key: string): Promise<string | null> | string | null;
  setItem(key: string, value: string): Promise<void> | void;
  removeItem(key: string): Promise<void> | void;
}

export class AsyncStorageAdapter implements Storage {
  constructor(
    private readonly store: AsyncStorageLike,
    private readonly prefix = "synchub:",
  ) {}

  async get(key: string): Promise<string | null> {
    return (await this.store.getItem(this.prefix + key)) ?? null;
  }

  async set(key: string, value: string): Promise<void> {
    await this.store.setItem(this.prefix + key, value);
  }

  async delete(key: string): Promise<void> {
    await this.store.removeItem(this.prefix + key);
  }
}

/** One object store of one IndexedDB database (browsers; a transaction's completion is the durable point). */
export class IndexedDBStorage implements Storage {
  private db: Promise<IDBDatabase> | null = null;

  constructor(
    private readonly name = "synchub",
    private readonly storeName = "documents",
    private readonly factory: IDBFactory = globalThis.indexedDB,
  ) {}

  private open(): Promise<IDBDatabase> {
    if (this.db === null) {
      this.db = new Promise((resolve, reject) => {
        const request = this.factory.open(this.name, 1);
        request.onupgradeneeded = () => request.result.createObjectStore(this.storeName);
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
    }
    return this.db;
  }

  private async run<T>(mode: IDBTransactionMode, work: (store: IDBObjectStore) => IDBRequest): Promise<T> {
    const db = await this.open();
    return new Promise<T>((resolve, reject) => {
      const tx = db.transaction(this.storeName, mode);
      const request = work(tx.objectStore(this.storeName));
      tx.oncomplete = () => resolve(request.result as T);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async get(key: string): Promise<string | null> {
    const value = await this.run<unknown>("readonly", (s) => s.get(key));
    return typeof value === "string" ? value : null;
  }

  async set(key: string, value: string): Promise<void> {
    await this.run("readwrite", (s) => s.put(value, key));
  }

  async delete(key: string): Promise<void> {
    await this.run("readwrite", (s) => s.delete(key));
  }
}
