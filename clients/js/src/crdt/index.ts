export { Cart, ClosedCartError, MAX_QUANTITY, MAX_SKU_LENGTH, type Line, type RejectedEdit } from "./cart.js";
export { CodecError, type Dot } from "./compact.js";
export { CausalContext, decodeContext, encodeContext, type WireContext } from "./context.js";
export { type Crdt, decodeCart, decodeReview, type Encoded, fromDict, fromHex, fromMsgpack, toDict, toHex, toMsgpack } from "./codec.js";
export { cmpTimestamp, HybridClock, type Timestamp } from "./hlc.js";
export { type Moderation, type ModerationStatus, Review, ReviewGoneError, type ReviewValue } from "./review.js";
