/**
 * Live stock of a region (or one product): the snapshot (GET /api/v1/inventory), then the channel's
 * events from the snapshot's position. Per (product, warehouse) the highest version applied is kept
 * and an event with a lower or equal one is ignored, so the handover and any redelivery are harmless.
 * A resync reads the snapshot again.
 */

import type { HubEvent, SyncHubClient } from "./client.js";

/** A stock row, as the snapshot and every stock event carry it. */
export interface StockLevel {
  product_id: string;
  sku?: string;
  warehouse_id: string;
  region?: string;
  on_hand: number;
  reserved: number;
  available: number;
  status?: string;
  version: number;
  ts?: number;
}

export interface StockChange {
  /** "snapshot" for a row of a (re)read snapshot, "event" for a live change. */
  source: "snapshot" | "event";
  level: StockLevel;
  position: string | null;
}

export interface InventoryOptions {
  region: string;
  productId?: string;
  onChange: (change: StockChange) => void;
  /** After the first snapshot is applied. */
  onReady?: () => void;
}

export class InventoryFeed {
  /** "{product_id}/{warehouse_id}" → the newest row applied. */
  readonly levels = new Map<string, StockLevel>();
  private subscription: { unsubscribe(): void } | null = null;
  private readyCalled = false;

  constructor(
    private readonly client: SyncHubClient,
    private readonly options: InventoryOptions,
  ) {}

  get channel(): string {
    const { region, productId } = this.options;
    return productId ? `inventory:${region}:${productId}` : `inventory:${region}`;
  }

  /** Read the snapshot, then follow the channel from its position. */
  async start(): Promise<void> {
    let position: string | null = null;
    try {
      position = await this.readSnapshot();
    } catch {
      // Offline: follow from the connection on, and read the snapshot once the hub answers.
      const off = this.client.on("open", () => {
        this.readSnapshot().then(off, () => undefined);
      });
    }
    this.subscription = this.client.subscribe(this.channel, {
      since: position,
      onEvent: (event) => this.onEvent(event),
      onResync: async () => this.readSnapshot(), // and resume from the snapshot's position
    });
  }

  stop(): void {
    this.subscription?.unsubscribe();
    this.subscription = null;
  }

  /** The newest row of (product, warehouse), if any. */
  level(productId: string, warehouseId: string): StockLevel | undefined {
    return this.levels.get(`${productId}/${warehouseId}`);
  }

  private async readSnapshot(): Promise<string | null> {
    let path = `/api/v1/inventory?region=${encodeURIComponent(this.options.region)}`;
    if (this.options.productId) path += `&product_id=${encodeURIComponent(this.options.productId)}`;
    const body = await this.client.rest<{ position: string | null; items: StockLevel[] }>("GET", path);
    for (const item of body.items) this.apply(item, "snapshot", body.position);
    if (!this.readyCalled) {
      this.readyCalled = true;
      this.options.onReady?.();
    }
    return body.position;
  }

  private onEvent(event: HubEvent): void {
    const data = event.data as unknown as StockLevel & { type?: string };
    if (data.type !== undefined) return; // not a stock change
    this.apply(data, "event", event.position);
  }

  /** Apply a row if it is newer than what is held; true when it was. */
  apply(level: StockLevel, source: "snapshot" | "event", position: string | null): boolean {
    const key = `${level.product_id}/${level.warehouse_id}`;
    const known = this.levels.get(key);
    if (known !== undefined && known.version >= level.version) return false;
    this.levels.set(key, level);
    this.options.onChange({ source, level, position });
    return true;
  }
}
